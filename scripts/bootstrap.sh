#!/usr/bin/env bash
# Set up PacketScript Lab on a fresh Debian/Ubuntu machine and run one job:
#   bash scripts/bootstrap.sh demo   # a first script on a live lab network (replay where namespaces are refused)
#   bash scripts/bootstrap.sh test   # the whole test suite
# Safe to run again: it installs only what is missing, and rebuilds a broken .venv.
# Afterwards `source .venv/bin/activate` puts `packetscript` (and jupyter) on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

job=${1:-}
case "$job" in
  demo|test) ;;
  *) echo "usage: bash scripts/bootstrap.sh demo|test" >&2; exit 2 ;;
esac

# System packages (README.md names the same list for administrators; tests/test_environment_files.py
# checks that they agree, and that binder/apt.txt has the libraries):
#   iptables        the lab's rules (run from /usr/sbin, also for ordinary accounts)
#   iproute2        `ip`, used by the tests to check that the host's network is untouched
#   util-linux      `unshare`, which gives the lab process its namespaces
#   libpcap0.8      libpcap, which scapy loads to compile BPF capture filters
#   libnetfilter-queue-dev  the library NetfilterQueue links against (and its headers)
#   gcc python3-dev to build NetfilterQueue;  python3-venv  for Debian's own python3
#   chromium        the browser test (JupyterLab and Notebook 7 driven by Playwright)
apt_packages=(iptables iproute2 util-linux libpcap0.8 libnetfilter-queue-dev gcc python3-dev python3-venv chromium)
# For the tests only: tshark reads recorded runs back (tests/test_recording.py, docs/records.md);
# npm brings configurable-http-proxy, the JupyterHub proxy (tests/test_hub.py).
# (npm only where no Node.js brings it already: Debian's npm would fight another nodejs.)
if [ "$job" = test ]; then
  apt_packages+=(tshark)
  command -v npm >/dev/null 2>&1 || apt_packages+=(npm)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing ${missing[*]}"
  if ! { { [ -z "$sudo" ] || command -v sudo >/dev/null 2>&1; } &&
         $sudo apt-get update -qq &&
         $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    echo "bootstrap: these system packages are missing: ${missing[*]}" >&2
    echo "bootstrap: ask an administrator to run: apt-get install ${missing[*]}   then run this again" >&2
    exit 1
  fi
fi

# A virtual environment with the package and its test extra, owned by whoever runs this.
if [ ! -w . ]; then
  echo "bootstrap: $PWD belongs to $(stat -c %U .) and $(id -un) cannot write to it;" \
       "clone the repository into your own home and run this there" >&2
  exit 1
fi

venv_problem() {
  # Prints why .venv cannot be used as it is (nothing when it is fine or absent).
  [ -e .venv ] || [ -L .venv ] || return 0
  local here prefix foreign shebang
  here=$(realpath -m .venv)
  if [ "$(id -u)" -ne 0 ]; then    # root may change anything; others only their own files
    foreign=$(find .venv ! -user "$(id -u)" -print -quit 2>/dev/null || echo ".venv")
    if [ -n "$foreign" ]; then
      echo "owned:$(stat -c %U "$foreign")"
      return 0
    fi
  fi
  if ! prefix=$(.venv/bin/python -c 'import sys; print(sys.prefix)' 2>/dev/null); then
    echo "its python ($(realpath -m .venv/bin/python)) does not run"
    return 0
  fi
  if [ "$(realpath -m "$prefix")" != "$here" ]; then
    echo "its python belongs to another environment ($prefix)"
    return 0
  fi
  shebang=$(head -n1 .venv/bin/pip 2>/dev/null | sed 's/^#!//')
  if [ -z "$shebang" ] || [ "$(realpath -m "$(dirname "$shebang")")" != "$here/bin" ]; then
    echo "it was copied or moved from ${shebang%/bin/*}"
  fi
}

problem=$(venv_problem)
case "$problem" in
  "") ;;
  owned:*)
    echo "bootstrap: $PWD/.venv (or files in it) belongs to ${problem#owned:}, so $(id -un) cannot" \
         "update it; remove it as its owner (sudo rm -rf '$PWD/.venv') and run this again" >&2
    exit 1 ;;
  *)
    echo "bootstrap: .venv is broken: $problem; rebuilding it"
    rm -rf .venv ;;
esac

python=${PYTHON:-python3}
if [ ! -e .venv ]; then
  echo "bootstrap: creating .venv with $($python --version)"
  $python -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
echo "bootstrap: installing packetscript-lab into .venv"
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -m kernel_magic install --sys-prefix >/dev/null

export PATH="$PWD/.venv/bin:$PATH"
case "$job" in
  demo)
    status=0
    packetscript demo || status=$?
    echo
    echo "Next (README.md): 'source .venv/bin/activate' puts packetscript on your PATH; then try"
    echo "  packetscript replay examples/dnat.lua examples/udp-to-10.77.2.100.pcap --out rewritten.pcap"
    echo "  pip install jupyterlab && jupyter lab notebooks/"
    exit $status ;;
  test) exec python -m pytest -q -ra ;;
esac

#!/usr/bin/env bash
# Set up PacketScript Lab on a fresh Debian/Ubuntu machine and run one job:
#   bash scripts/bootstrap.sh demo   # a first script on a live lab network (replay where namespaces are refused)
#   bash scripts/bootstrap.sh test   # the whole test suite
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

job=${1:-}
case "$job" in
  demo|test) ;;
  *) echo "usage: bash scripts/bootstrap.sh demo|test" >&2; exit 2 ;;
esac

# System packages: iptables and iproute2 for the lab; libnetfilter-queue-dev and a compiler
# to build NetfilterQueue; venv support for Debian's own python3; chromium for the browser test.
apt_packages=(iptables iproute2 util-linux libnetfilter-queue-dev gcc python3-dev python3-venv chromium)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "bootstrap: these packages are missing: ${missing[*]}" >&2
      echo "bootstrap: install them as root (apt-get install ${missing[*]}) and run this again" >&2
      exit 1
    fi
  fi
  echo "bootstrap: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# A virtual environment with the package and its test extra.
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($python --version)"
  $python -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
echo "bootstrap: installing packetscript-lab into .venv"
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -m kernel_magic install --sys-prefix >/dev/null

export PATH="$PWD/.venv/bin:$PATH"
case "$job" in
  demo) exec packetscript demo ;;
  test) exec python -m pytest -q -ra ;;
esac

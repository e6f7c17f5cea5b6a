"""The Kubernetes deployment, checked as far as a machine without a cluster or docker allows:
deploy/k8s/values.yaml against the Zero to JupyterHub chart's values schema (when a copy of the
chart is at hand) and for the pod settings unprivileged user namespaces need, and
deploy/k8s/Dockerfile for installing what scripts/bootstrap.sh installs and the kernel spec."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
# The chart's schema is not part of this repository: Z2JH_SCHEMA names a values.schema.yaml,
# or a git copy of github.com/jupyterhub/zero-to-jupyterhub-k8s is read at test time.
Z2JH_GIT = Path("/work/.mirror/jupyterhub+zero-to-jupyterhub-k8s/repo")

# The keys of values.yaml, as jupyterhub/values.schema.yaml of the chart defines them
# (zero-to-jupyterhub-k8s at 48ea50e, chart 4.x): the check when no schema is at hand.
SCHEMA_KEYS = {
    "singleuser": {"allowPrivilegeEscalation", "cloudMetadata", "cmd", "cpu", "defaultUrl",
                   "events", "extraAnnotations", "extraContainers", "extraEnv", "extraFiles",
                   "extraLabels", "extraNodeAffinity", "extraPodAffinity", "extraPodAntiAffinity",
                   "extraPodConfig", "extraResource", "extraTolerations", "fsGid", "image",
                   "initContainers", "lifecycleHooks", "memory", "networkPolicy", "networkTools",
                   "nodeSelector", "podNameTemplate", "profileList", "serviceAccountName",
                   "startTimeout", "storage", "uid"},
    "singleuser.image": {"name", "tag", "pullPolicy", "pullSecrets"},
    "singleuser.cpu": {"limit", "guarantee"},
    "singleuser.memory": {"limit", "guarantee"},
    "singleuser.extraFiles.*": {"mountPath", "data", "stringData", "binaryData", "mode"},
}

# bootstrap.sh's packages the image leaves out, and why (the Dockerfile says the same).
NOT_IN_IMAGE = {"chromium": "the browser test only",
                "python3-dev": "Debian's python3: the image's Python brings its headers",
                "python3-venv": "Debian's python3: the image's Python brings venv"}


def values() -> dict:
    return yaml.safe_load((K8S / "values.yaml").read_text())


def chart_schema() -> dict | None:
    path = os.environ.get("Z2JH_SCHEMA")
    if path:
        return yaml.safe_load(Path(path).read_text())
    if Z2JH_GIT.exists():
        res = subprocess.run(["git", "--git-dir", str(Z2JH_GIT), "show",
                              "HEAD:jupyterhub/values.schema.yaml"], capture_output=True, text=True)
        if res.returncode == 0:
            return yaml.safe_load(res.stdout)
    return None


def test_values_follow_the_charts_schema():
    v = values()
    schema = chart_schema()
    if schema is not None:
        import jsonschema

        # The schema lists what a whole values file needs; the chart's own values.yaml
        # supplies the rest, so check ours merged over a skeleton of required sections.
        jsonschema.validate(_merged_with_required(v, schema), schema)
        assert set(v["singleuser"]) <= set(schema["properties"]["singleuser"]["properties"])
    for path, allowed in SCHEMA_KEYS.items():
        node = v
        for part in path.split("."):
            node = node[part] if part != "*" else next(iter(node.values()))
        assert set(node) <= allowed, (path, set(node) - allowed)


def _merged_with_required(v: dict, schema: dict) -> dict:
    """The chart's default values.yaml when the git copy has it, with ours merged over it."""
    if os.environ.get("Z2JH_SCHEMA"):
        base_path = Path(os.environ["Z2JH_SCHEMA"]).with_name("values.yaml")
        base = yaml.safe_load(base_path.read_text()) if base_path.exists() else None
    else:
        res = subprocess.run(["git", "--git-dir", str(Z2JH_GIT), "show",
                              "HEAD:jupyterhub/values.yaml"], capture_output=True, text=True)
        base = yaml.safe_load(res.stdout) if res.returncode == 0 else None
    if base is None:
        pytest.fail("the chart's schema came without its values.yaml: set Z2JH_SCHEMA to a "
                    "values.schema.yaml that has values.yaml beside it")

    def merge(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge(a.get(k), w) for k, w in b.items()}}
        return b

    return merge(base, v)


def test_pods_may_create_unprivileged_user_namespaces():
    v = values()
    su = v["singleuser"]
    assert su["extraPodConfig"]["hostUsers"] is False            # the pod in its own user namespace
    assert su["uid"] not in (0, None) and su["allowPrivilegeEscalation"] is False
    csc = v["hub"]["config"]["KubeSpawner"]["container_security_context"]
    assert csc["seccompProfile"]["type"] in ("Unconfined", "Localhost")   # unshare(2) allowed
    assert csc["appArmorProfile"]["type"] in ("Unconfined", "Localhost")  # mount(2) allowed
    assert csc["capabilities"]["drop"] == ["ALL"] and csc["runAsNonRoot"] is True
    assert "privileged" not in csc and csc.get("procMount", "Default") == "Default"
    # per-student bounds the kernel keeps, and the course's limits file the lab reads
    assert su["cpu"]["limit"] and su["memory"]["limit"]
    limits = su["extraFiles"]["packetscript-limits"]
    assert limits["mountPath"] == "/etc/packetscript-lab/limits.json"
    assert limits["mode"] & 0o022 == 0
    assert set(json.loads(limits["stringData"])) == {"max_labs", "max_pps"}


def _bootstrap_apt_packages() -> set[str]:
    text = (ROOT / "scripts" / "bootstrap.sh").read_text()
    m = re.search(r"^apt_packages=\((.*?)\)", text, re.M)
    return set(m.group(1).split())


def _dockerfile_runs() -> list[str]:
    text = (K8S / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [ln[4:] for ln in joined.splitlines() if ln.startswith("RUN ")]


def test_the_image_installs_what_bootstrap_installs_and_the_kernel_spec():
    installed = set()
    for run in _dockerfile_runs():
        for cmd in re.split(r"&&|;", run):
            words = shlex.split(cmd)
            if "apt-get" in words and "install" in words:
                installed |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    wanted = _bootstrap_apt_packages()
    assert installed == wanted - set(NOT_IN_IMAGE), (installed ^ (wanted - set(NOT_IN_IMAGE)))
    runs = " ".join(_dockerfile_runs())
    assert "python -m kernel_magic install --sys-prefix" in runs
    assert re.search(r"pip install [^&]*/opt/packetscript-lab", runs)
    text = (K8S / "Dockerfile").read_text()
    assert re.search(r"^COPY \. /opt/packetscript-lab$", text, re.M)
    uid = re.search(r"^ARG NB_UID=(\d+)$", text, re.M).group(1)
    assert int(uid) == values()["singleuser"]["uid"]                  # the pod runs as the image's user
    assert re.search(r"^USER \$\{NB_UID\}$", text, re.M)
    assert 'CMD ["jupyterhub-singleuser"]' in text

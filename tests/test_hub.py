"""deploy/hub/jupyterhub_config.py with a real JupyterHub and configurable-http-proxy: three
student accounts, started through the hub's API, each run a live %%packetscript cell at the
same time in their own server, as their own Unix user, and each sees only its own traffic."""
from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from labutil import require_lab
from packetscript_lab.lab import programs
from stockuser import with_root_dirs_visible

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "hub" / "jupyterhub_config.py"
STUDENTS = ("psl-hub-1", "psl-hub-2", "psl-hub-3")
CHP_DIR = Path("/tmp/packetscript-test-chp")      # configurable-http-proxy from npm, installed once

DROP_EVERY_OTHER = """\
n = 0
function process_packet(p)
  n = n + 1
  if n % 2 == 0 then return NF_DROP end
  return NF_ACCEPT
end
"""


def need(condition: bool, why: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(why + " (CI is set: this test must run)")
        pytest.skip(why)


def proxy_program() -> str:
    found = shutil.which("configurable-http-proxy")
    if found:
        return found
    exe = CHP_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
    if not exe.exists():
        need(shutil.which("npm") is not None, "npm is missing (Debian: apt-get install npm)")
        res = subprocess.run(["npm", "install", "--silent", "--prefix", str(CHP_DIR),
                              "configurable-http-proxy@4"], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
    return str(exe)


def student_accounts() -> list[pwd.struct_passwd]:
    out = []
    for name in STUDENTS:
        try:
            out.append(pwd.getpwnam(name))
        except KeyError:
            subprocess.run([programs.find("useradd"), "--create-home", "--shell", "/bin/sh", name],
                           check=True, capture_output=True)
            out.append(pwd.getpwnam(name))
    return out


def free_port() -> int:
    # three ports in a row: the hub's public port, its internal port, the proxy's API
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 60000 and all(_free(port + i) for i in (1, 2)):
            return port
    raise RuntimeError("no three free ports in a row")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def hub_command(stage: Path) -> list[str]:
    """jupyterhub, in a private mount namespace where a Python living under /root (closed to
    other accounts) is visible to the students' servers; the host's mounts are not changed."""
    argv = [str(Path(sys.executable).with_name("jupyterhub")), "-f", str(CONFIG)]
    return with_root_dirs_visible(argv, stage)


def api(base: str, token: str, method: str, path: str, body=None):
    import urllib.request
    req = urllib.request.Request(f"{base}/hub/api{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read()
    return json.loads(text) if text else None


async def _execute(base: str, user: str, token: str, cells: list[str], timeout: float) -> list[str]:
    """Run cells in a new kernel of the user's server (through the proxy); their text outputs."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest
    from tornado.websocket import websocket_connect

    auth = {"Authorization": f"token {token}"}
    r = await AsyncHTTPClient().fetch(f"{base}/user/{user}/api/kernels", method="POST", body="{}",
                                      headers=auth, request_timeout=60)
    kernel = json.loads(r.body)["id"]
    ws_url = base.replace("http", "ws", 1) + f"/user/{user}/api/kernels/{kernel}/channels"
    ws = await websocket_connect(HTTPRequest(ws_url, headers=auth, request_timeout=60))
    session, texts, shown = uuid.uuid4().hex, [], {}
    for code in cells:
        msg_id = uuid.uuid4().hex
        ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": user,
                       "session": session, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
        deadline = time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(ws.read_message(), max(0.1, deadline - time.monotonic()))
            assert raw is not None, "the kernel's websocket closed"
            m = json.loads(raw)
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = m["msg_type"]
            if kind == "stream":
                texts.append(m["content"]["text"])
            elif kind in ("execute_result", "display_data", "update_display_data"):
                # a run's summary replaces its "compiling…" line in place (display ids)
                text = m["content"]["data"].get("text/plain", "")
                display = (m["content"].get("transient") or {}).get("display_id")
                if display in shown:
                    texts[shown[display]] = text
                else:
                    if display:
                        shown[display] = len(texts)
                    texts.append(text)
            elif kind == "error":
                raise AssertionError(f"{user}: {m['content']['ename']}: {m['content']['evalue']}")
            elif kind == "status" and m["content"]["execution_state"] == "idle":
                break
    ws.close()
    return texts


def test_three_students_run_live_cells_at_once_through_the_hub(tmp_path):
    need(os.geteuid() == 0, "the hub must run as root to start servers as the students")
    require_lab()
    need(Path(sys.executable).with_name("jupyterhub").exists(),
         "jupyterhub is not installed (pip install -e '.[test]')")
    proxy = proxy_program()
    accounts = student_accounts()
    port, token = free_port(), secrets.token_hex(16)
    hubdir = tmp_path / "hub"
    hubdir.mkdir()
    env = dict(os.environ, PSL_HUB_USERS=",".join(STUDENTS), PSL_HUB_ADMIN_TOKEN=token,
               PSL_HUB_PORT=str(port), PSL_HUB_DIR=str(hubdir), PSL_HUB_AUTH="dummy",
               PSL_HUB_DUMMY_PASSWORD=secrets.token_hex(8), PSL_HUB_MAX_LABS="3")
    env["PATH"] = f"{Path(proxy).parent}{os.pathsep}{env['PATH']}"
    env.pop("PACKETSCRIPT_BACKEND", None)
    log = open(tmp_path / "hub.log", "w")
    hub = subprocess.Popen(hub_command(tmp_path / "stage"), cwd=hubdir, env=env, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                api(base, token, "GET", "/")
                break
            except Exception:
                assert hub.poll() is None, (tmp_path / "hub.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the hub did not answer in 60 s"
                time.sleep(0.3)
        user_tokens = {}
        for name in STUDENTS:
            try:
                api(base, token, "POST", f"/users/{name}")
            except Exception:
                pass                                   # already known to this hub's database
            user_tokens[name] = api(base, token, "POST", f"/users/{name}/tokens",
                                    {"note": "test", "expires_in": 3600})["token"]
            api(base, token, "POST", f"/users/{name}/server")
        deadline = time.monotonic() + 120
        for name in STUDENTS:
            while not (api(base, token, "GET", f"/users/{name}")["servers"].get("", {}) or {}).get("ready"):
                assert time.monotonic() < deadline, (tmp_path / "hub.log").read_text()[-3000:]
                time.sleep(0.3)

        # Each student sends a different number of packets: a summary showing another's
        # traffic would show the wrong count.
        counts = {name: 20 * (i + 1) for i, name in enumerate(STUDENTS)}
        results, errors = {}, {}

        def student(name):
            cells = [
                "import os, pwd; print('user', pwd.getpwuid(os.getuid()).pw_name)\n"
                "from packetscript_lab.lab import limits; print('max_labs', limits.current().max_labs)",
                "%load_ext kernel_magic",
                f'%%packetscript halve --duration 3 --no-dashboard '
                f'--traffic "udp client server:9000 count={counts[name]} rate=50"\n' + DROP_EVERY_OTHER,
            ]
            try:
                results[name] = asyncio.run(_execute(base, name, user_tokens[name], cells, 120))
            except BaseException as exc:
                errors[name] = exc

        threads = [threading.Thread(target=student, args=(n,)) for n in STUDENTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(200)
        assert not errors, errors
        for acct, name in zip(accounts, STUDENTS):
            text = "\n".join(results[name])
            assert f"user {acct.pw_name}" in text
            assert "max_labs 3" in text                 # the hub's limit reached the student
            m = re.search(r"packetscript 'halve' on (\w+), [\d.]+ s: (.*)", text)
            assert m, text
            stats = dict((k, int(v)) for k, v in re.findall(r"(\w+) (\d+)", m.group(2)))
            assert m.group(1) == "nfqueue", text
            assert stats["seen"] == counts[name], (name, text)
            assert stats["dropped"] == counts[name] // 2, (name, text)
        # One student's background lab refuses another student: the socket checks the uid.
        first, second = STUDENTS[0], STUDENTS[1]
        up = ("import subprocess, sys\n"
              "r = subprocess.run([sys.executable, '-m', 'packetscript_lab', 'lab', '{0}', "
              "'--name', 'class'], capture_output=True, text=True)\n"
              "print('rc', r.returncode, r.stdout, r.stderr)")
        out = asyncio.run(_execute(base, first, user_tokens[first], [up.format("up")], 120))
        assert "rc 0" in "".join(out), out
        try:
            probe = (
                "from packetscript_lab.lab import Lab, LabError\n"
                f"try:\n    Lab(_connect='\\0packetscript-lab-{accounts[0].pw_uid}-class', start_timeout=5)\n"
                "    print('connected')\n"
                "except LabError as exc:\n    print('refused:', exc)\n")
            out = "".join(asyncio.run(_execute(base, second, user_tokens[second], [probe], 120)))
            assert "refused:" in out and "connected" not in out, out
            mine = ("from packetscript_lab.lab import Lab\n"
                    f"lab = Lab(_connect='\\0packetscript-lab-{accounts[0].pw_uid}-class')\n"
                    "print('hosts', sorted(lab.hosts)); lab.close()")
            out = "".join(asyncio.run(_execute(base, first, user_tokens[first], [mine], 120)))
            assert "hosts ['client', 'server']" in out, out
        finally:
            asyncio.run(_execute(base, first, user_tokens[first], [up.format("down")], 120))
        for name in STUDENTS:
            api(base, token, "DELETE", f"/users/{name}/server")
    finally:
        os.killpg(hub.pid, 15)
        try:
            hub.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(hub.pid, 9)
            hub.wait(10)
        log.close()

"""A JupyterLab server and Debian's chromium, for tests that use the notebook as a person does.

The server runs on 127.0.0.1 with a random token, from a temporary directory with its own
configuration, settings and runtime files, and the PacketScript Lab kernel spec installed
into that directory. Chromium is Debian's package, driven by Playwright through
``executable_path``: ``playwright install`` would download a browser, which fails here.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("PACKETSCRIPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def missing() -> list[str]:
    """What this machine lacks for the browser tests, with the command that brings it."""
    out = []
    for module, fix in (("playwright", "pip install -e '.[test]'"),
                        ("jupyterlab", "pip install -e '.[test]'"),
                        ("notebook", "pip install -e '.[test]'")):
        try:
            __import__(module)
        except ImportError:
            out.append(f"{module} ({fix})")
    if not os.access(CHROMIUM, os.X_OK):
        out.append(f"chromium at {CHROMIUM} (apt-get install chromium)")
    return out


class JupyterServer:
    def __init__(self, base: Path):
        self.base = base
        self.notebooks = base / "notebooks"
        self.notebooks.mkdir(parents=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        prefix = base / "prefix"
        subprocess.run([sys.executable, "-m", "kernel_magic", "install", "--prefix", str(prefix)],
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True,
                       capture_output=True)
        settings = base / "settings"
        news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        news.parent.mkdir(parents=True)
        news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = dict(os.environ, PYTHONPATH=str(ROOT),
                   JUPYTER_PATH=str(prefix / "share" / "jupyter"),
                   JUPYTER_CONFIG_DIR=str(base / "config"),
                   JUPYTER_RUNTIME_DIR=str(base / "runtime"),
                   JUPYTERLAB_SETTINGS_DIR=str(settings),
                   JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"))
        env.pop("PACKETSCRIPT_BACKEND", None)
        self.log = open(base / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
             f"--port={self.port}", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={self.notebooks}", "--allow-root",
             "--ServerApp.open_browser=False"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(90)

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def _wait_ready(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {(self.base / 'server.log').read_text()}")
            try:
                self.api("status")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("jupyter lab did not answer in time") from None
                time.sleep(0.2)     # polling a server that is starting: no event to wait on

    def page_url(self, path: str) -> str:
        # reset: no layout restored from an earlier page (only this notebook is open)
        return f"{self.url}/{path}?reset&token={self.token}"

    def shutdown_kernels(self, seconds: float = 60) -> None:
        """Shut every kernel down; a kernel still starting answers 500 for a moment."""
        import urllib.error

        from labutil import wait_until

        def all_gone() -> bool:
            try:
                kernels = self.api("kernels")
                for kernel in kernels:
                    self.api(f"kernels/{kernel['id']}", method="DELETE")
                return not kernels
            except urllib.error.HTTPError:
                return False        # still starting: the server gives no "kernel ready" event
        wait_until(all_gone, seconds, "the server's kernels to shut down")

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()

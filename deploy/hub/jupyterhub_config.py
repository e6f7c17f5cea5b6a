# JupyterHub for a PacketScript class on one machine (docs/classroom.md, "A hub on one machine").
#
# Students log in with their own Unix accounts (PAM); the hub, run as root, starts each
# student's notebook server as that student (LocalProcessSpawner). A student's labs are then
# rootless: user namespaces owned by that account, unreachable from other students' accounts
# (their lab sockets are abstract sockets that check the peer's uid, their namespaces
# belong to another user). Settings come from the environment so one file serves a course
# and the tests:
#   PSL_HUB_USERS          comma-separated student accounts allowed in (default: anyone PAM accepts)
#   PSL_HUB_ADMIN_TOKEN    a token for the course-admin service (creating users, starting servers)
#   PSL_HUB_PORT           the hub's port on 127.0.0.1 (default 8000); put TLS in front for a class
#   PSL_HUB_DIR            where the hub keeps its database and cookie secret (default: here)
#   PSL_HUB_AUTH           "pam" (default) or "dummy" (tests only: any password, listed users)
#   PSL_HUB_MAX_LABS       labs one student may run at once (PACKETSCRIPT_MAX_LABS in their servers)
#   PSL_HUB_MAX_PPS        packets a second one lab's traffic may send (PACKETSCRIPT_MAX_PPS)
# A student can change their own environment: for limits they cannot raise, write them to
# /etc/packetscript-lab/limits.json as root (docs/classroom.md, "Limits").
import os
import sys

c = get_config()  # noqa: F821 (JupyterHub provides it)
here = os.environ.get("PSL_HUB_DIR") or os.path.dirname(os.path.abspath(__file__))
port = int(os.environ.get("PSL_HUB_PORT", "8000"))

c.JupyterHub.bind_url = f"http://127.0.0.1:{port}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = port + 1
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{port + 2}"
c.JupyterHub.db_url = f"sqlite:///{os.path.join(here, 'jupyterhub.sqlite')}"
c.JupyterHub.cookie_secret_file = os.path.join(here, "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = os.path.join(here, "jupyterhub.pid")

users = [u for u in os.environ.get("PSL_HUB_USERS", "").split(",") if u]
if os.environ.get("PSL_HUB_AUTH", "pam") == "dummy":
    c.JupyterHub.authenticator_class = "dummy"
    c.DummyAuthenticator.password = os.environ.get("PSL_HUB_DUMMY_PASSWORD", "")
else:
    c.JupyterHub.authenticator_class = "pam"
if users:
    c.Authenticator.allowed_users = set(users)
else:
    c.Authenticator.allow_all = True

# Each student's server runs as that student, from this Python environment, with a stock
# PATH (the lab finds iptables in /usr/sbin itself).
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [os.path.join(sys.prefix, "bin", "jupyterhub-singleuser")]
c.Spawner.environment = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
for hub_name, lab_name in (("PSL_HUB_MAX_LABS", "PACKETSCRIPT_MAX_LABS"),
                           ("PSL_HUB_MAX_PPS", "PACKETSCRIPT_MAX_PPS")):
    if os.environ.get(hub_name):
        c.Spawner.environment[lab_name] = os.environ[hub_name]
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
c.LocalProcessSpawner.shell_cmd = []

token = os.environ.get("PSL_HUB_ADMIN_TOKEN")
if token:
    c.JupyterHub.services = [{"name": "course-admin", "api_token": token}]
    c.JupyterHub.load_roles = [{
        "name": "course-admin",
        "scopes": ["admin:users", "admin:servers", "tokens", "access:servers", "list:users"],
        "services": ["course-admin"],
    }]

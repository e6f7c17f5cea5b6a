"""One table of lab commands, read by the client and the lab process alike."""
import inspect
import threading

import pytest

from labutil import pair_lab  # noqa: F401  (fixture)
from packetscript_lab import LabError
from packetscript_lab.lab import Lab, commands
from packetscript_lab.lab.protocol import Connection


def test_the_forwarders_take_the_handlers_parameters_and_docs():
    for name in ("ping", "udp_stream", "udp_blast", "tcp_echo", "iptables_save", "status"):
        method, handler = getattr(Lab, name), commands.COMMANDS[name]
        assert list(inspect.signature(method).parameters)[1:] == \
            list(inspect.signature(handler).parameters)[2:]
        assert method.__doc__ == handler.__doc__
    assert inspect.signature(Lab.ping).parameters["count"].default == 3


def test_a_wrong_argument_names_the_method_before_anything_is_sent():
    with pytest.raises(TypeError, match=r"Lab\.ping\(\).*'counts'"):
        Lab.ping(object(), "client", "server", counts=3)


@pytest.mark.lab
def test_an_unknown_command_is_refused_by_the_client_and_the_lab(pair_lab):
    with pytest.raises(LabError, match="unknown lab command 'reboot'; the lab's commands are "
                                       "attach, replace"):
        pair_lab._call("reboot")
    # The same name sent past the client's check: the lab process refuses it too, and stays up.
    slot = [threading.Event(), None]
    with pair_lab._lock:
        pair_lab._pending[999_999] = slot
    pair_lab._outbox.put((999_999, Connection.encode({"id": 999_999, "cmd": "reboot", "args": {}})))
    assert slot[0].wait(10)
    reply = slot[1]
    assert reply["err"]["type"] == "LabError" and "unknown lab command 'reboot'" in \
        reply["err"]["message"]
    assert pair_lab.ping("client", "server", count=1)["received"] == 1

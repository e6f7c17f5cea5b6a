"""The ``%%packetscript`` cell magic and the ``%packetscript`` line magic."""
from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split

from kernel_magic import options as opts
from kernel_magic.session import NotebookSession
from packetscript_lab.backends.flow_frames import build_packets
from packetscript_lab.core import flows as flows_mod
from packetscript_lab.core.netutil import ETH_HLEN

LINE_HELP = """Manage the PacketScript lab and the running scripts.

  %packetscript up [--topology pair|router|FILE] [--ipv6] [--vm]
                                              build the private lab network
                                              (--ipv6: dual-stack, fd77::/16 addresses too;
                                              --vm: inside the xt_LUA VM, for --backend kernel)
  %packetscript down                          stop every live script, remove the lab
  %packetscript status                        the lab's hosts and state
  %packetscript list                          scripts, backends and counters
  %packetscript stop NAME                     stop a script and show its summary
  %packetscript send FLOW                     send packets, e.g.
                                              %packetscript send udp client server:9000 count=5

FLOW uses the traffic language of --traffic (docs/lab.md#traffic-language), e.g.
  udp SRC DST[:PORT] [rate=PPS] [count=N|duration=S]; ping SRC DST; tcp SRC DST[:PORT]; pcap FILE
Without a lab (no namespaces here) the packets go to the running replay scripts.
"""


@magics_class
class PacketScriptMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self.session = NotebookSession(shell)

    @magic_arguments(name="%packetscript")      # usage reads "%%packetscript ..."
    @argument("name", nargs="?", default=None,
              help="name of the script (default 'script'); re-running a cell with the same "
                   "name replaces the running script in place, without losing a packet")
    @argument("--backend", choices=opts.BACKENDS, default=None,
              help="nfqueue (default where the lab can run), kernel (the xt_LUA module), or "
                   "replay (no privileges: a pcap or generated traffic, in-process)")
    @argument("--host", default=None, help="lab host whose iptables get the rule (default server)")
    @argument("--table", default=None, help="iptables table (default filter)")
    @argument("--chain", default=None, help="iptables chain (default INPUT)")
    @argument("--match", default=None,
              help='iptables match for the rule, quoted (default "-p udp --dport 9000")')
    @argument("--lua", choices=opts.LUAS, default="luajit", help="Lua runtime (default luajit)")
    @argument("--profile", choices=("lab", "kernel"), default="lab",
              help="lab: string/table/math allowed; kernel: only what xt_LUA offers")
    @argument("--on-error", dest="on_error", choices=("drop", "accept"), default="drop",
              help="verdict for a packet whose script fails (PacketScript drops)")
    @argument("--budget", type=int, default=None, help="Lua instructions allowed per packet")
    @argument("--queues", type=int, default=1,
              help="nfqueue: spread the rule over N queues (1-16), one worker and one copy "
                   "of the script each; a global is then per queue (docs/lab.md#fan-out)")
    @argument("--pcap", default=None,
              help="replay: play this pcap; live: send it from the client host")
    @argument("--duration", type=float, default=None,
              help="seconds of traffic; the cell waits meanwhile, then the dashboard becomes "
                   "a figure and a summary table. Without it (and without --pcap) the script "
                   "runs until stopped.")
    @argument("--pace", choices=opts.PACES, default=None,
              help="replay backend: 'recorded' (default) plays packets at their recorded "
                   "times (gaps over 1 s shortened to 1 s), 'fast' back to back. A --pcap "
                   "replay ends when the capture has been played (or after --duration).")
    @argument("--traffic", default=None,
              help='flows to generate, quoted, e.g. "udp client server:9000 rate=200; ping '
                   'client server" (the language: docs/lab.md#traffic-language). Default with '
                   '--duration or on replay: ' + repr(flows_mod.DEFAULT_TRAFFIC))
    @argument("--record", default=None, metavar="DIR",
              help="when the run ends, write a record of it into DIR (a new directory): what "
                   "the script saw, each packet's verdict, changed fields and error "
                   "(docs/records.md; check it with packetscript replay --verify DIR)")
    @argument("--no-dashboard", dest="no_dashboard", action="store_true",
              help="no live widgets (the summary is still written)")
    @cell_magic("packetscript")
    def packetscript_cell(self, line, cell):
        """Compile this cell's Lua (a PacketScript ``process_packet(p)``) and attach it.

        The script is attached to the lab network (through NFQUEUE by default) or, where no
        lab can run, replayed over a pcap or over generated lab traffic. A live dashboard
        shows packets/s by verdict, counters, recent packets and script errors with the cell
        line that caused them. With --duration, or over a --pcap, the cell waits until the
        run ends; then the dashboard is replaced by a static figure and a summary table,
        which a saved notebook shows without a kernel. Other runs end with the Stop button
        or %packetscript stop NAME.
        """
        parser = self.packetscript_cell.parser
        ns = opts.parse(parser, opts.protect_values(arg_split(line, posix=True)))
        options = opts.from_namespace(ns)
        if not cell.strip():
            raise UsageError("the cell is empty: write a Lua function process_packet(p) in it")
        cell_lines = [f"%%packetscript {line}".rstrip()] + cell.splitlines()
        run = self.session.start_cell(options, cell, cell_lines)
        if options.finite:
            self.session.wait(run)      # the result replaces the dashboard in this cell

    @line_magic("packetscript")
    def packetscript_line(self, line):
        argv = arg_split(line, posix=True)
        if not argv:
            raise UsageError(LINE_HELP)
        command, args = argv[0], argv[1:]
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            import difflib
            commands = [n[5:] for n in dir(self) if n.startswith("_cmd_")]
            near = difflib.get_close_matches(command, commands, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise UsageError(f"unknown command {command!r}{hint}\n\n{LINE_HELP}")
        return handler(args)

    packetscript_line.__doc__ = LINE_HELP

    # --- line commands -----------------------------------------------------------------
    def _cmd_up(self, args):
        topology = None
        ipv6, vm = "--ipv6" in args, "--vm" in args
        rest = [a for a in args if a not in ("--ipv6", "--vm")]
        if rest[:1] == ["--topology"] and len(rest) == 2:
            topology = rest[1]
        elif rest or args.count("--ipv6") > 1 or args.count("--vm") > 1:
            raise UsageError("usage: %packetscript up [--topology pair|router|FILE.json] [--ipv6] [--vm]")
        if topology is not None:
            from packetscript_lab.lab.description import TopologyError, load
            try:
                load(topology)      # a bad description: one clear error, nothing built
            except TopologyError as exc:
                raise UsageError(str(exc)) from None
        lab = self.session.ensure_lab(topology, True if ipv6 else None,
                                      lab_backend="xtlua-vm" if vm else "namespaces")
        title = "lab is up" if lab is not None else \
            f"replay backend: generated traffic uses the {self.session.topology} topology's hosts"
        self._print_hosts(self.session.hosts(), title)
        if topology is not None and topology not in ("pair", "router"):
            from IPython.display import Image, display
            from packetscript_lab.lab.drawing import png
            display(Image(data=png(topology)))   # the described network, drawn

    def _cmd_down(self, args):
        _no_args("down", args)
        summaries = self.session.down()
        for summary in summaries:
            summary.display()
        print("lab is down" if self.session.lab_unavailable is None else
              "no lab was running (replay backend)")

    def _cmd_status(self, args):
        _no_args("status", args)
        s = self.session
        if s.lab is not None:
            self._print_hosts(s.hosts(), f"lab is up ({s.topology})")
            status = dict(s.lab.status())
            for key, value in status.items():
                if key in ("hosts", "interfaces", "attached"):
                    continue
                print(f"  {key}: {value:.1f}" if isinstance(value, float) else f"  {key}: {value}")
            for host, ifaces in (status.get("interfaces") or {}).items():
                for ifname, c in ifaces.items():
                    print(f"  {host} {ifname}: rx {c.get('rx_packets', 0)} packets, "
                          f"tx {c.get('tx_packets', 0)} packets, "
                          f"dropped {c.get('rx_dropped', 0) + c.get('tx_dropped', 0)}")
        elif s.lab_unavailable is not None:
            print(f"no lab: {s.lab_unavailable}; scripts run on the replay backend")
        else:
            print("lab not started (it starts with the first live script or %packetscript up)")
        self._cmd_list([])

    def _cmd_list(self, args):
        _no_args("list", args)
        if not self.session.runs:
            print("no scripts")
            return
        for name, run in self.session.runs.items():
            st = run.view()["stats"]
            state = "running" if run.active else f"ended ({run.end_reason})"
            print(f"{name:<16} {run.backend:<8} {state:<24} seen {st.get('seen', 0)}, "
                  f"accepted {st.get('accepted', 0)}, dropped {st.get('dropped', 0)}, "
                  f"continued {st.get('continued', 0)}, errors {st.get('errors', 0)}")

    def _cmd_stop(self, args):
        if len(args) != 1:
            raise UsageError("usage: %packetscript stop NAME")
        self.session.stop(args[0]).display()

    def _cmd_send(self, args):
        if not args:
            raise UsageError("usage: %packetscript send udp|tcp|ping SRC DST[:PORT] [count=N] | "
                             "pcap FILE (docs/lab.md#traffic-language)")
        spec = " ".join(args)
        try:
            flows = flows_mod.parse_traffic(spec)
        except flows_mod.TrafficError as exc:
            raise UsageError(f"send: {exc}") from None
        s = self.session
        lab = s.ensure_lab()
        hosts = s.hosts()
        try:
            per_flow = [(flow, build_packets([flow], hosts, 1.0)) for flow in flows]
        except flows_mod.TrafficError as exc:
            raise UsageError(f"send: {exc}") from None
        total = sum(len(pkts) for _, pkts in per_flow)
        if lab is not None:
            for flow, pkts in per_flow:
                lab.send(flow.src, [f[ETH_HLEN:] for _, f in pkts])   # IP packets: routed by the host
            print(f"sent {total} packets")
            return
        targets = [r for r in s.runs.values() if r.active and r.backend == "replay"]
        if not targets:
            raise UsageError("no running script to send to: start one with a %%packetscript "
                             "cell (without --duration)")
        frames = sorted((pair for _, pkts in per_flow for pair in pkts), key=lambda f: f[0])
        for run in targets:
            run.handle.inject(frames)
        print(f"sent {total} packets to {', '.join(r.name for r in targets)} (replay)")

    @staticmethod
    def _print_hosts(hosts: dict, title: str) -> None:
        print(title)
        for name, h in hosts.items():
            ip6 = f"  {h.ip6}" if getattr(h, "ip6", None) else ""
            print(f"  {name:<8} {getattr(h, 'ip', '?'):<15} {getattr(h, 'mac', '')}{ip6}")


def _no_args(command, args):
    if args:
        raise UsageError(f"%packetscript {command} takes no arguments")

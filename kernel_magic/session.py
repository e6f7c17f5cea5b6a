"""Per-kernel state of the extension: the lab (made on first use), the runs by name, the
cell cache and the pump. The magics are a thin layer of argument parsing over this.
"""
from __future__ import annotations

import os
import time

from IPython.core.error import UsageError

from kernel_magic import lua_errors, pcaps
from kernel_magic.cache import CellCache
from kernel_magic.dashboard import Dashboard
from kernel_magic.options import RunOptions
from kernel_magic.outputs import CellOutputs
from kernel_magic.pump import INTERVAL, Pump
from kernel_magic.runs import Run
from packetscript_lab.backends.flow_frames import build_packets, capture_frames
from packetscript_lab.core import flows as flows_mod

ENV_BACKEND = "PACKETSCRIPT_BACKEND"    # "replay": never try to build a lab (e.g. on Binder)
GRACE = 0.2                            # let the last verdicts and stats sample arrive
TRAFFIC_SLACK = 30.0                   # a traffic generator this late past --duration is stuck


RECORD_LIMIT = 10_000     # packets a recorded live cell keeps (the latest)


class NotebookSession:
    """What the extension holds in one notebook kernel (``kernel_magic.get_session()``)."""

    def __init__(self, shell):
        self.shell = shell
        self.lab = None
        self.topology = "pair"
        self.ipv6 = False          # dual-stack (%packetscript up --ipv6)
        self.lab_unavailable: str | None = None
        self.runs: dict[str, Run] = {}
        self.cache = CellCache()
        self.pump = Pump(self)

    # --- the lab ------------------------------------------------------------------------
    def ensure_lab(self, topology: str | None = None, ipv6: bool | None = None,
                   lab_backend: str = "namespaces"):
        """The running Lab, or None (after saying once why) when none can be built here.
        ``lab_backend="xtlua-vm"`` starts it inside the xt_LUA VM, and a failure there is an
        error (a kernel-backend cell must not quietly run elsewhere)."""
        if topology is not None and self.lab is not None and topology != self.topology:
            raise UsageError(f"the lab is up with topology {self.topology!r}; "
                             "run %packetscript down first")
        if ipv6 is not None and self.lab is not None and ipv6 != self.ipv6:
            raise UsageError(f"the lab is up {'dual-stack' if self.ipv6 else 'IPv4 only'}; "
                             "run %packetscript down first")
        if topology is not None:
            self.topology = topology
        if ipv6 is not None:
            self.ipv6 = ipv6
        if self.lab is not None and getattr(self.lab, "closed", False):
            # the lab process ended (crashed or killed): its scripts went with it
            for run in list(self.runs.values()):
                if run.active and run.backend != "replay":
                    self.finish(run, "the lab process ended")
            print("PacketScript Lab: the lab process had ended; building a new lab.")
            self.lab = None
        if self.lab is not None:
            if lab_backend == "xtlua-vm" and getattr(self.lab, "backend", "namespaces") != "xtlua-vm":
                raise UsageError("the lab is up on this machine, not in the xt_LUA VM: run "
                                 "%packetscript down first")
            return self.lab
        if lab_backend == "xtlua-vm":
            from packetscript_lab import Lab, LabError
            try:
                lab = Lab(topology=self.topology, ipv6=self.ipv6, backend="xtlua-vm")
            except LabError as exc:
                raise UsageError(str(exc)) from None
            self.lab = lab.__enter__() or lab
            info = lab.vm.info()
            print(f"PacketScript Lab: the lab runs in a VM with the real xt_LUA "
                  f"(kernel {info['kernel']}, {info['accel']}, up in {info['ready_seconds']} s).")
            return self.lab
        if self.lab_unavailable is not None:
            return None
        reason = None
        if os.environ.get(ENV_BACKEND, "").lower() == "replay":
            reason = f"{ENV_BACKEND}=replay is set"
        else:
            try:
                from packetscript_lab import Lab, LabError
            except ImportError as exc:
                reason = f"the lab package cannot be imported ({exc})"
            else:
                try:
                    lab = Lab(topology=self.topology, ipv6=self.ipv6)
                    self.lab = lab.__enter__() or lab
                except LabError as exc:
                    reason = str(exc).rstrip(".")
        if reason is not None:
            self.lab_unavailable = reason
            print(f"PacketScript Lab: no private lab network here: {reason}.\n"
                  "Scripts run on the replay backend instead: over --pcap FILE, or over "
                  "generated lab traffic (--traffic, default "
                  f"{flows_mod.DEFAULT_TRAFFIC!r}). Verdicts and the dashboard work the same.")
            return None
        return self.lab

    def down(self) -> list:
        summaries = [self.finish(run, "lab shut down") for run in list(self.runs.values())
                     if run.active and run.backend != "replay"]
        if self.lab is not None:
            lab, self.lab = self.lab, None
            lab.__exit__(None, None, None)
        return summaries

    def hosts(self) -> dict:
        if self.lab is not None:
            return dict(self.lab.hosts)
        from kernel_magic.hosts import replay_hosts
        return replay_hosts(self.topology, self.ipv6)

    def choose_backend(self, options: RunOptions, outputs: CellOutputs | None = None) -> str:
        if options.backend == "replay":
            return "replay"
        lab_backend = "namespaces"
        if options.backend == "kernel":
            lab_backend = self.kernel_lab_backend()
        if outputs is not None and self.lab is None and lab_backend == "xtlua-vm":
            outputs.status(f"{options.name}: booting the xt_LUA lab VM (about a minute under "
                           "emulation)…")
        elif outputs is not None and self.lab is None and self.lab_unavailable is None \
                and os.environ.get(ENV_BACKEND, "").lower() != "replay":
            outputs.status(f"{options.name}: starting the lab network…")
        if self.ensure_lab(lab_backend=lab_backend) is None:
            return "replay"
        return options.backend or "nfqueue"

    def kernel_lab_backend(self) -> str:
        """Where a --backend kernel cell's lab runs: this machine when it has xt_LUA, else
        the xt_LUA VM (a build must exist); PACKETSCRIPT_KERNEL_LAB=vm|host decides instead."""
        from packetscript_lab import LabError
        if self.lab is not None and not getattr(self.lab, "closed", False):
            if getattr(self.lab, "backend", "namespaces") == "xtlua-vm":
                return "xtlua-vm"
        try:
            from packetscript_lab.lab.vmlab import lab_backend_for_kernel
            wanted = lab_backend_for_kernel()
        except LabError as exc:
            raise UsageError(str(exc)) from None
        if wanted == "xtlua-vm" and self.lab is not None and not getattr(self.lab, "closed", False):
            raise UsageError("the lab is up on this machine, whose kernel has no xt_LUA: run "
                             "`%packetscript down`, then this cell starts the lab in the xt_LUA "
                             "VM (or use --backend nfqueue)")
        return wanted

    # --- runs ---------------------------------------------------------------------------
    def start_cell(self, options: RunOptions, source: str, cell_lines: list[str], *,
                   show: bool = True) -> Run:
        """Compile, attach (or replace in place) and show the dashboard; returns the run.

        With ``show`` the cell gets its outputs at once (a status line within a moment of
        running it), which the dashboard and then the result replace.
        """
        outputs = CellOutputs(f"{options.name}: compiling…") if show else None
        try:
            script = self.cache.compile(source, options, cell_lines)
            if options.profile == "kernel":
                self.report_portability(source, options, cell_lines)
            backend = self.choose_backend(options, outputs)
            if backend != "replay" and options.pace is not None:
                raise UsageError("--pace sets how the replay backend plays packets; the live "
                                 "lab sends them at the traffic's own rate (drop --pace, or "
                                 "add --backend replay)")
            if backend != "replay":
                script.close()             # compiled to check it; the lab runs its own copy
            old = self.runs.get(options.name)
            if old is not None and old.active:
                if old.backend == backend and old.options.same_attachment(options):
                    return self._replace(old, options, source, cell_lines, script, outputs)
                self.finish(old, "replaced by a cell with other options")
                print(f"{options.name!r}: options changed, so the old script was detached and "
                      "the new one attached (not in place).")
            if outputs is not None:
                outputs.status(f"{options.name}: attaching on {backend}…")
            if backend == "replay":
                run = self._start_replay(options, source, cell_lines, script)
            else:
                run = self._start_live(options, source, cell_lines, backend)
        except BaseException:
            if outputs is not None:
                outputs.abandon()
            raise
        self.runs[options.name] = run
        self._show(run, outputs)
        return run

    def _show(self, run: Run, outputs: CellOutputs | None) -> None:
        """Show the run; ■ pressed while it appears ends it here, with its summary, as
        it would a moment later from the wait loop."""
        try:
            self._show_outputs(run, outputs)
        except KeyboardInterrupt:
            self.finish(run, "interrupted")

    def report_portability(self, source: str, options: RunOptions, cell_lines) -> None:
        """Say which cell lines would not work in the kernel module (computed once per hash)."""
        from packetscript_lab.xtlua.checker import check_source
        findings = self.cache.findings(
            source, options, lambda src: check_source(src, "kernel", name=options.name).findings)
        if not findings:
            print("Kernel portability: no findings; this script should load and run in xt_LUA.")
            return
        print("Kernel portability (xt_LUA):")
        for f in findings:
            line = f.line + 1 if f.line else None          # the magic line is cell line 1
            print("  " + lua_errors.describe(f"{f.severity} [{f.rule}] {f.message}; fix: {f.fix}",
                                             line, cell_lines).replace("\n", "\n  "))

    def _start_replay(self, options, source, cell_lines, script) -> Run:
        from packetscript_lab.backends.replay_run import ReplayRun
        frames, raw_ip = self.replay_frames(options)
        handle = ReplayRun(options.name, script, frames, raw_ip=raw_ip,
                           pace=options.pace or "recorded",
                           keep=options.record is not None)
        run = Run(options.name, options, source, cell_lines, "replay", handle)
        what = f"pcap {options.pcap}" if options.pcap else \
            f"generated traffic {options.traffic or flows_mod.DEFAULT_TRAFFIC!r}"
        pace = "back to back (--pace fast)" if options.pace == "fast" else "at recorded pace"
        run.notes.append(f"replayed {len(frames)} packets of {what}, {pace}")
        if options.placement():
            given = ", ".join(f"--{k}" for k in options.placement())
            run.notes.append(f"{given}: iptables options, not applied on the replay backend; "
                             "every replayed packet went through the script")
        return run

    def replay_frames(self, options: RunOptions):
        if options.pcap:
            return self.cache.memo(("pcap", options.pcap, os.path.getmtime(options.pcap)),
                                   lambda: pcaps.read_frames(options.pcap))
        spec = options.traffic or flows_mod.DEFAULT_TRAFFIC
        seconds = options.duration or flows_mod.DEFAULT_SECONDS
        hosts = self.hosts()

        def build():
            try:
                flows = flows_mod.parse_traffic(spec)
                flows_mod.check_hosts(flows, hosts)
                if len(flows) == 1 and flows[0].kind == "pcap":   # may be raw IP, like --pcap
                    return capture_frames(flows[0])
                return build_packets(flows, hosts, seconds), False
            except flows_mod.TrafficError as exc:
                raise UsageError(f"--traffic: {exc}") from None
        return self.cache.memo(("traffic", spec, seconds, self.topology, self.ipv6), build)

    def _start_live(self, options, source, cell_lines, backend) -> Run:
        from packetscript_lab import LabError, ScriptError
        lab = self.lab
        flows = None
        if options.pcap:        # the same as --traffic "pcap FILE from=client"
            flows = [flows_mod.Flow(kind="pcap", src="client", path=options.pcap)]
        elif options.traffic or options.duration:
            try:
                flows = flows_mod.parse_traffic(options.traffic or flows_mod.DEFAULT_TRAFFIC)
                flows_mod.check_hosts(flows, lab.hosts)
                flows_mod.check_load(flows, options.duration or flows_mod.DEFAULT_SECONDS)
            except flows_mod.TrafficError as exc:
                raise UsageError(f"--traffic: {exc}") from None
        try:
            handle = lab.attach(source, name=options.name, backend=backend,
                                **options.placement(), **options.script_kwargs(),
                                **({"queues": options.queues} if options.queues != 1 else {}),
                                line_offset=1,
                                record=RECORD_LIMIT if options.record is not None else 0)
        except ScriptError as exc:
            raise UsageError(self.cache.describe_script_error(exc, cell_lines)) from None
        except LabError as exc:
            raise UsageError(f"cannot attach {options.name!r} on {backend}: {exc}") from None
        try:
            run = Run(options.name, options, source, cell_lines, backend, handle)
            if flows:
                run.drive_flows(lab, flows, options.duration or flows_mod.DEFAULT_SECONDS)
        except BaseException:       # interrupted before the cell holds the run: none lingers
            handle.detach()
            raise
        return run

    def _replace(self, run: Run, options, source, cell_lines, script, outputs) -> Run:
        replacement = script if run.backend == "replay" else source
        try:
            run.replace(source, cell_lines, replacement)
        except Exception as exc:
            raise UsageError(f"cannot replace {run.name!r}: {exc}") from None
        # the earlier cell gives the run up: a line saying where it went, no widget
        if run.outputs is not None:
            run.outputs.continued()
            run.outputs = None
        if run.dashboard is not None:
            run.dashboard.close()
            run.dashboard = None
        run.options = options
        run.deadline = None if options.duration is None else time.monotonic() + options.duration
        print(f"{run.name!r}: script replaced in place on {run.backend}; no packet was lost.")
        self._show(run, outputs)
        return run

    def _show_outputs(self, run: Run, outputs: CellOutputs | None) -> None:
        """Turn the cell's status line into the dashboard (or a line saying how it ends)."""
        run.outputs = outputs
        run.dashboard = None
        blocking = run.options.finite
        if outputs is not None:
            title = f"{run.name} · {run.backend}"
            if run.backend != "replay":
                place = " ".join(f"{k} {v}" for k, v in run.options.placement().items())
                title += f" · {place}" if place else ""
            if run.options.dashboard:
                run.dashboard = Dashboard(
                    title, run.cell_lines,
                    on_stop=None if blocking else (lambda: self.finish(run, "stopped")),
                    stop_note="interrupt the kernel (■) to end early")
                outputs.dashboard(run.dashboard)
                self.pump.tick_one(run, with_plot=False)
            elif blocking:
                outputs.status(f"{run.name}: running on {run.backend}; the figure and the "
                               "table follow when it ends")
            else:
                outputs.status(f"{run.name}: attached on {run.backend}; it runs until "
                               f"%packetscript stop {run.name}")
        if not blocking:
            self.pump.ensure_running()

    def wait(self, run: Run):
        """Block the cell until the run ends by itself, ticking the pump; then summarise.

        Interrupting the kernel ends this run now and writes its summary: the lab process
        lives in a session of its own, so the interrupt reaches only the kernel, and the
        lab, its rules and the other scripts go on.
        """
        run.blocking = True
        reason = None
        try:
            while run.active:
                reason = run.due()
                if reason is not None:
                    break
                if run.deadline is not None and time.monotonic() > run.deadline + TRAFFIC_SLACK:
                    run.notes.append("the traffic generator had not finished "
                                     f"{TRAFFIC_SLACK:.0f} s after --duration")
                    reason = "duration reached"
                    break
                self.pump.tick()
                time.sleep(INTERVAL)
            if run.active and run.backend != "replay":
                time.sleep(GRACE)
        except KeyboardInterrupt:
            reason = "interrupted"
        if not run.active:                 # stopped meanwhile (e.g. %packetscript down)
            return run.summary()
        if reason == "interrupted":
            if not run.traffic_done():
                run.notes.append("the traffic generator was still sending when the run was "
                                 "interrupted; its counts are not in this summary")
        else:
            run.wait_traffic(timeout=5.0)
        return self.finish(run, reason)

    def finish(self, run: Run, reason: str):
        """Stop ``run`` and put its figure and table where its dashboard was."""
        if run.options.record is not None and run.active:
            self._record(run)
        run.stop(reason)
        summary = run.summary()
        outputs, dashboard = run.outputs, run.dashboard
        run.outputs = run.dashboard = None
        if outputs is not None:
            reachable = outputs.reachable()
            outputs.result(summary)
            if dashboard is not None and not reachable:
                # a page reloaded since the cell ran cannot see the update above: the
                # dashboard it shows gets the figure and the table instead
                dashboard.show_final(summary, reason)
                dashboard = None
        if dashboard is not None:
            dashboard.close()
        return summary

    def _record(self, run: Run) -> None:
        """Write the run's record before its handle lets the kept packets go."""
        from packetscript_lab.recording import RecordError
        traffic = {"pcap": run.options.pcap} if run.options.pcap else \
            {"flows": run.options.traffic or flows_mod.DEFAULT_TRAFFIC}
        try:
            path = run.handle.record(run.options.record, traffic=traffic)
            run.notes.append(f"recorded in {path}: open seen.pcapng in Wireshark; "
                             f"packetscript replay --verify {path} replays it")
        except (RecordError, OSError, Exception) as exc:   # the summary still comes
            run.notes.append(f"--record {run.options.record}: not written: {exc}")

    def stop(self, name: str):
        run = self.runs.get(name)
        if run is None:
            raise UsageError(f"no script named {name!r} (running: {self._names()})")
        if not run.active:
            raise UsageError(f"{name!r} already ended ({run.end_reason})")
        return self.finish(run, "stopped")

    def _names(self) -> str:
        names = [n for n, r in self.runs.items() if r.active]
        return ", ".join(names) if names else "none"

    def close(self) -> None:
        for run in list(self.runs.values()):
            if run.active:
                run.stop("extension unloaded")
            if run.dashboard is not None:
                run.dashboard.close()
                run.dashboard = None
        if self.lab is not None:
            self.down()


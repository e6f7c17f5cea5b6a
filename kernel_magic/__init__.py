"""IPython extension for PacketScript Lab: ``%load_ext kernel_magic``.

Registers the ``%%packetscript`` cell magic (compile a cell's Lua and attach it to lab traffic
or replay it) and the ``%packetscript`` line magic (lab up/down/status, list, stop, send).
:func:`run` is the same thing for loops in Python (parameter sweeps).
"""
from __future__ import annotations

__all__ = ["load_ipython_extension", "unload_ipython_extension", "run", "get_session"]

_magics = None


def load_ipython_extension(ipython) -> None:
    global _magics
    if _magics is not None and _magics.shell is ipython:
        return        # already loaded here (the PacketScript Lab kernel loads it at start-up)
    from kernel_magic.magics import PacketScriptMagics
    from packetscript_lab import testing
    _magics = PacketScriptMagics(ipython)
    ipython.register_magics(_magics)
    testing.use_notebook(_magics.session)     # pt.cell(NAME) reads this kernel's cells


def unload_ipython_extension(ipython) -> None:
    global _magics
    if _magics is not None:
        from packetscript_lab import testing
        testing.use_notebook(None)
        _magics.session.close()
        _magics = None


def get_session():
    """The extension's state in this kernel (runs by name, the lab)."""
    if _magics is None:
        raise RuntimeError("load the extension first: %load_ext kernel_magic")
    return _magics.session


def run(source: str, name: str = "script", *, duration: float, display: bool = True,
        **options):
    """Run ``source`` like a ``%%packetscript NAME --duration S ...`` cell; returns its summary.

    ``options`` are the cell options with underscores (``traffic=``, ``backend=``,
    ``match=``, ``pcap=``, ``on_error=``, ``dashboard=False`` ...). With ``display=False``
    nothing is written to the cell, which suits a sweep that plots its own figure.
    """
    from kernel_magic import options as opts
    from kernel_magic.magics import PacketScriptMagics

    sess = get_session()
    ns = PacketScriptMagics.packetscript_cell.parser.parse_args([])
    ns.name, ns.duration = name, duration
    ns.no_dashboard = not options.pop("dashboard", display)
    for key, value in options.items():
        if not hasattr(ns, key) or key in ("name", "no_dashboard"):
            raise TypeError(f"run() got an unknown option {key!r}")
        setattr(ns, key, value)
    run_options = opts.from_namespace(ns)
    cell_lines = [f"%%packetscript {name}"] + source.splitlines()
    r = sess.start_cell(run_options, source, cell_lines, show=display)
    return sess.wait(r)         # with display, the figure and table replace the dashboard

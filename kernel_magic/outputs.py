"""The two outputs a ``%%packetscript`` cell owns, updated in place by display id.

The first says at once what is happening ("compiling…", "starting the lab network…"),
then holds the live dashboard, and when the run ends becomes the run's figure; the second
stays empty until it becomes the summary table. So a finished cell holds one figure and one
table and no widget: a saved notebook shows them without a kernel (JupyterLab, Notebook 7,
nbconvert, GitHub) instead of "Error displaying widget: model not found".

A page reloaded since the cell ran shows the saved outputs, but the browser no longer knows
their display ids, so updates cannot reach them; :meth:`CellOutputs.reachable` tells the
caller when the request came from such a page (another frontend session).
"""
from __future__ import annotations

import html


def frontend_session() -> str | None:
    """The session id of the frontend whose request the kernel is handling now."""
    try:
        from IPython import get_ipython
        kernel = getattr(get_ipython(), "kernel", None)
        if kernel is None:
            return None
        try:
            parent = kernel.get_parent("shell")
        except TypeError:               # older ipykernel: one parent for every channel
            parent = kernel.get_parent()
        return (parent or {}).get("header", {}).get("session") or None
    except Exception:
        return None


def status_bundle(text: str) -> dict:
    return {"text/plain": text,
            "text/html": f"<div style='color:#555;font-style:italic'>{html.escape(text)}</div>"}


class CellOutputs:
    def __init__(self, first_status: str):
        from IPython.display import display
        self.frontend = frontend_session()
        self.main = display(status_bundle(first_status), raw=True, display_id=True)
        self.table = display({"text/plain": ""}, raw=True, display_id=True)

    def reachable(self) -> bool:
        """False when the current request comes from another page than the cell's."""
        now = frontend_session()
        return self.frontend is None or now is None or now == self.frontend

    def status(self, text: str) -> None:
        self.main.update(status_bundle(text), raw=True)

    def dashboard(self, dashboard) -> None:
        self.main.update(dashboard.bundle(), raw=True)

    def result(self, summary) -> None:
        self.main.update(summary.figure_bundle(), raw=True)
        self.table.update(summary)

    def continued(self) -> None:
        self.main.update({"text/plain": "(this run continues in a later cell)"}, raw=True)

    def abandon(self) -> None:
        """The cell failed before a run existed: its error follows, the status goes."""
        self.main.update({"text/plain": ""}, raw=True)

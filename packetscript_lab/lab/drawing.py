"""A drawing of a topology description: LANs as columns, hosts as boxes, addresses on links.

Hosts on one LAN hang below its bus; hosts on several LANs (routers, firewalls) sit above,
between the LANs they join. Returns a matplotlib Figure, which a notebook shows inline.
"""
from __future__ import annotations


def draw(description, ax=None):
    """Draw a preset name, a description dict or file; returns the matplotlib Figure."""
    # A bare Figure (no pyplot): no global state, and IPython still renders it inline.
    from matplotlib.figure import Figure

    from .description import load

    desc = load(description)
    lans = list(desc["lans"])
    leaves = {lan: [h for h, ifs in desc["hosts"].items() if len(ifs) == 1 and ifs[0]["lan"] == lan]
              for lan in lans}
    # Each LAN is as wide as the hosts hanging below it, side by side.
    half = {lan: max(1.0, 0.6 * len(leaves[lan])) for lan in lans}
    col, x = {}, 0.0
    for lan in lans:
        col[lan] = x + half[lan]
        x += 2 * half[lan] + 0.6
    if ax is None:
        fig = Figure(figsize=(max(5.0, 1.1 * x + 1.0), 4.2))
        ax = fig.add_subplot()
    fig = ax.figure
    bus_y = 0.0
    spots: dict[str, tuple[float, float]] = {}
    for host, ifaces in desc["hosts"].items():
        if len(ifaces) > 1:
            xs = [col[i["lan"]] for i in ifaces]
            spots[host] = (sum(xs) / len(xs), 1.8)
    for lan in lans:
        n = len(leaves[lan])
        for k, host in enumerate(leaves[lan]):
            spots[host] = (col[lan] - half[lan] + (2 * half[lan]) * (k + 0.5) / n, -1.5)
    for lan in lans:
        x = col[lan]
        ax.plot([x - half[lan], x + half[lan]], [bus_y, bus_y], color="#444", lw=4,
                solid_capstyle="round")
        ax.text(x - half[lan], bus_y - 0.12, f"{lan} {desc['lans'][lan]['subnet']}", ha="left",
                va="top", fontsize=7, color="#225")
    for host, ifaces in desc["hosts"].items():
        hx, hy = spots[host]
        for n, i in enumerate(ifaces):
            x = col[i["lan"]]
            x = x if len(ifaces) > 1 else hx      # leaves drop straight onto their bus
            ax.plot([hx, x], [hy, bus_y], color="#888", lw=1)
            mx, my = hx + 0.6 * (x - hx), hy + 0.6 * (bus_y - hy)
            ax.text(mx, my, f"eth{n} .{i['ip'].rsplit('.', 1)[1]}", fontsize=7, ha="center",
                    va="center", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none"))
        role = []
        if host in desc["forward"]:
            role.append("forwards")
        if host in desc["rules"]:
            role.append(f"{len(desc['rules'][host])} rules")
        label = host + (f"\n({', '.join(role)})" if role else "")
        ax.text(hx, hy, label, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.4", fc="#e8f0ff" if len(ifaces) == 1 else "#ffe8cc",
                          ec="#335"))
    ys = [y for _, y in spots.values()] + [bus_y]
    ax.set_xlim(-0.4, max(col[lan] + half[lan] for lan in lans) + 0.4)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.9)
    ax.set_title(f"lab topology {desc['name']!r}", fontsize=10)
    ax.axis("off")
    return fig


def png(description) -> bytes:
    """The drawing as PNG bytes (what the notebook magic displays)."""
    import io
    buf = io.BytesIO()
    draw(description).savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()

"""HTML and plot pieces shared by the two reports, the feedback-quality report
(quality/report.py) and the run report (evaluate/report.py): numbers and tables as HTML,
matplotlib figures as base64 PNGs (embedded as data: URIs, so a page is one self-contained file).
No torch, and nothing of alignloop above it."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: `&ndash;` for None / NaN, floats to `digits`, [lo, hi] intervals, escaped text."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&ndash;"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    if isinstance(v, list) and len(v) == 2:
        return f"[{fmt(v[0])}, {fmt(v[1])}]"
    return html.escape(str(v))


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; every cell goes through `fmt`."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> str:
    """The figure as a base64 PNG; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")

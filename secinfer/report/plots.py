"""`secinfer run --plot`: per layer, what the run's report knows, labelled as what it is.

`layer_panels(report)` says what is drawn (pure data, tested); `plot_layers` draws it.

  plain    seconds per block (plain is the reference: its error is 0 by definition).
  approx   max abs error vs plain per block (log scale), seconds per block.
  mpc      the same blocks' error under `approx` with the same plan (intermediate values of
           the secure run are never revealed: that is the part of the error the
           approximations explain), with the run's own output error as a line; MB sent
           per party and rounds per block (online phase); the data owner's seconds.
  he       the `approx` error of the same plan, as for mpc; the server's seconds per block
           (refresh round trips apart); ct-ct and ct-pt products, rotations and refreshes.

A value the report does not have is marked "n/a", never drawn as a number; a non-finite one
"nan" or "inf"; an exact 0 on a log scale "0".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Panel:
    """One row of the figure: bars per block, one series per legend entry."""

    ylabel: str
    series: dict[str, list[float | None]]
    log: bool = False
    line: tuple[float, str] | None = None
    """A horizontal reference line (value, legend label), e.g. the run's own output error."""


def _number(value: Any) -> float | None:
    """A float (NaN and infinities included), or None for a missing value."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _text(value: Any, spec: str) -> str:
    number = _number(value)
    return "n/a" if number is None else format(number, spec)


def layer_panels(report: dict[str, Any]) -> tuple[str, list[Panel]]:
    """The figure's title and panels for `report` (module docstring)."""
    layers = report.get("layers") or []
    backend = report.get("backend", "?")
    name = Path(str(report.get("model", ""))).name
    title = f"{name} on {backend}"
    if backend == "plain":
        title += " (the reference)"
    else:
        title += (
            f": output max abs error {_text(report.get('max_abs_error'), '.3g')} vs plain, "
            f"cosine {_text(report.get('cosine'), '.6f')}"
        )

    def column(key: str) -> list[float | None]:
        return [_number(layer.get(key)) for layer in layers]

    panels: list[Panel] = []
    if backend != "plain" and any("approx_max_abs_error" in layer for layer in layers):
        own = _number(report.get("max_abs_error"))
        line = (own, f"{backend} run: output error") if own and math.isfinite(own) else None
        panels.append(
            Panel(
                "approx, same plan:\nmax abs error vs plain",
                {"approx (same plan), per block": column("approx_max_abs_error")},
                log=True,
                line=line,
            )
        )
        title += f"\nper-block error: approx, same plan ({backend} reveals no intermediate)"
    elif backend != "plain":
        panels.append(Panel("max abs error vs plain", {backend: column("max_abs_error")}, log=True))
    if any("bytes_sent" in layer for layer in layers):
        sent = [layer.get("bytes_sent") or {} for layer in layers]
        megabytes = {
            party.replace("_", " "): [_number(s.get(party)) for s in sent]
            for party in ("model_owner", "data_owner")
        }
        for values in megabytes.values():
            values[:] = [None if v is None else v / 1e6 for v in values]
        panels.append(Panel("MB sent (online)", megabytes))
    if any("rounds" in layer for layer in layers):
        panels.append(Panel("rounds", {"rounds": column("rounds")}))
    if any("seconds" in layer for layer in layers):
        who = {"mpc": " (data owner)", "he": " (server, no refresh)"}.get(backend, "")
        panels.append(Panel(f"seconds{who}", {"seconds": column("seconds")}))
    if any("operations" in layer for layer in layers):
        ops = [layer.get("operations") or {} for layer in layers]
        series = {
            label: [_number(o.get(key)) for o in ops]
            for key, label in (
                ("ct_ct_mults", "ct-ct products"),
                ("ct_pt_mults", "ct-pt products"),
                ("rotations", "rotations"),
            )
        }
        series["refreshes"] = column("refreshes")
        panels.append(Panel("HE operations", series))
    return title, panels


def plot_layers(report: dict[str, Any], path: str | Path) -> Path:
    """Draw `layer_panels(report)` to the PNG `path` (atomically); returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title, panels = layer_panels(report)
    names = [str(layer.get("name", "?")) for layer in report.get("layers") or []]
    rows = max(1, len(panels))
    size = (max(6, 0.5 * len(names) + 3), 1 + 2.4 * rows)
    fig, axes = plt.subplots(rows, 1, figsize=size, sharex=True, squeeze=False)
    for axis, panel in zip(axes[:, 0], panels, strict=False):
        _draw(axis, panel, len(names))
    axes[0, 0].set_title(title, fontsize=9)
    axes[-1, 0].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def _mark(value: float | None, log: bool) -> str:
    """The text drawn instead of a bar ("n/a", "nan", "inf", "0"), or "" for a bar."""
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    return "0" if log and value <= 0 else ""


def _draw(axis: Any, panel: Panel, count: int) -> None:
    """Bars of each series side by side, marks (`_mark`) where there is no bar."""
    width = 0.8 / max(1, len(panel.series))
    values = [v for vs in panel.series.values() for v in vs]
    known = [v for v in values if v is not None and math.isfinite(v)]
    log = panel.log and any(v > 0 for v in known)
    if log:
        axis.set_yscale("log")
    floor = min((v for v in known if v > 0), default=1.0) if log else 0.0
    for k, (label, series) in enumerate(panel.series.items()):
        offset = (k - (len(panel.series) - 1) / 2) * width
        bars = []
        for i, value in enumerate(series):
            mark = _mark(value, log)
            if mark:
                axis.text(i + offset, floor, mark, ha="center", va="bottom", fontsize=6)
            else:
                bars.append((i + offset, value))
        if bars:
            xs, ys = zip(*bars, strict=True)
            axis.bar(xs, ys, width=width, label=label)
    if panel.line is not None:
        axis.axhline(panel.line[0], color="black", linestyle="--", linewidth=1, label=panel.line[1])
    axis.set_ylabel(panel.ylabel, fontsize=8)
    axis.set_xlim(-0.6, max(count, 1) - 0.4)
    if len(panel.series) > 1 or panel.line is not None:
        axis.legend(fontsize=7)

"""Render the catalog: a markdown table and a PNG of every entry's error curve."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from approximations.library import Catalog, Entry, catalog

CURVE_POINTS = 4001


def error_curve(entry: Entry) -> tuple[np.ndarray, np.ndarray]:
    """(x, error) on the entry's interval: |approx - exact|, or the relative error."""
    lo, hi = entry.interval
    log = lo > 0 and hi / lo > 100
    x = np.geomspace(lo, hi, CURVE_POINTS) if log else np.linspace(lo, hi, CURVE_POINTS)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        got = entry.approximation(xt).numpy()
        want = entry.exact(xt).numpy()
    err = np.abs(got - want)
    if entry.error_kind == "relative":
        err = err / np.abs(want)
    return x, err


def plot_errors(path: str | Path, entries: Catalog = catalog) -> Path:
    """One panel per approximated function, one curve per method, log-scale error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries.values():
        groups[entry.function].append(entry)
    cols = 3
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (function, members) in zip(axes.ravel(), groups.items(), strict=False):
        for entry in members:
            x, err = error_curve(entry)
            if not np.any(err > 0):
                continue
            ax.plot(x, np.maximum(err, 1e-17), lw=1, label=f"{entry.name} ({entry.max_error:.1e})")
            if entry.interval[0] > 0 and entry.interval[1] / entry.interval[0] > 100:
                ax.set_xscale("log")
        ax.set_yscale("log")
        kind = "relative" if members[0].error_kind == "relative" else "absolute"
        ax.set_title(f"{function}: {kind} error")
        ax.set_xlabel("x")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(groups) :]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

"""`secinfer run --plot`: per-layer error against plaintext (and, per layer, time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_layers(report: dict[str, Any], path: str | Path) -> Path:
    """Two panels: max abs error vs plain per block (log scale), seconds per block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    names = [layer["name"] for layer in layers]
    errors = [max(layer["max_abs_error"] or 0.0, 1e-16) for layer in layers]
    seconds = [layer["seconds"] for layer in layers]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.5 * len(names) + 3), 6), sharex=True)
    top.bar(range(len(names)), errors, color="tab:red")
    top.set_yscale("log")
    top.set_ylabel("max abs error vs plain")
    name = Path(report["model"]).name
    top.set_title(f"{name} on {report['backend']}: cosine {report['cosine']:.6f}")
    bottom.bar(range(len(names)), seconds, color="tab:blue")
    bottom.set_ylabel("seconds")
    bottom.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out

"""The MPC section as a whole: both parts run, assembled into one record with the setting,
the figures published elsewhere and the code state measured, and written as JSON and
markdown (`mpc.*`, or `mpc.quick.*` for a quick run, which never replaces real figures).

Everything runs for real: the model owner (CrypTen rank 0), the data owner (rank 1) and the
dealer (CrypTen's trusted third party) are three fresh processes on this machine
(`protocols.mpc.local.run_local`), with 16 fractional bits in CrypTen's 64-bit ring. In one
run both implementations of a comparison are computed one after the other on the same
shares, and a meter on each party's communicator (`protocols.mpc.meter`) is read before and
after each of them. Sharing the inputs and revealing the outputs are outside the measured
span (with CrypTen's pseudo-random zero sharing, sharing costs no traffic anyway).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.cases import LAYER_SIZES, PRECISION_BITS, TINY_LAYER
from benchmarks.layer import layer_section
from benchmarks.ops import op_section
from benchmarks.published import PUBLISHED
from benchmarks.tables import markdown
from secinfer.report.files import dumps_strict


def code_state() -> dict[str, Any]:
    """The commit measured and the tracked files that differ from it (kernels change)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=False, timeout=30
        )
        return done.stdout if done.returncode == 0 else ""

    # porcelain lines are "XY path": the status columns may be blank, so no strip before [3:]
    modified = git("status", "--porcelain", "--untracked-files=no").splitlines()
    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "modified": [m[3:] for m in modified],
    }


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Both parts; `quick` uses tiny shapes (a check that everything runs, not a figure)."""
    began = time.perf_counter()
    ops = op_section(quick=quick, seed=seed)
    layers = layer_section((TINY_LAYER,) if quick else LAYER_SIZES, seed=seed)
    from benchmarks.mpc_model import model_section
    from benchmarks.two_quad import model_accuracy

    model = model_section(quick=quick, seed=seed)

    return {
        "quick": quick,
        "setting": {
            "parties": "model owner + data owner + dealer (CrypTen TTP), 3 local processes, "
            "1 torch thread each",
            "precision_bits": PRECISION_BITS,
            "mb": "10^6 bytes",
        },
        "ops": ops,
        "two_quad_model": model_accuracy(),
        "layers": layers,
        "model": model,
        "published_elsewhere": list(PUBLISHED),
        "code": code_state(),
        "seconds": time.perf_counter() - began,
    }


def _strip_arrays(value: Any) -> Any:
    """The record without opened outputs (key "y"), which the JSON does not keep."""
    if isinstance(value, dict):
        return {k: _strip_arrays(v) for k, v in value.items() if k != "y"}
    if isinstance(value, list):
        return [_strip_arrays(v) for v in value]
    return value


def write(record: dict[str, Any], out_dir: Path) -> str:
    """Write `mpc.json` and `mpc.md` into `out_dir` (`mpc.quick.*` for a quick run, so that
    it never replaces real figures); return the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "mpc.quick" if record.get("quick") else "mpc"
    table = markdown(record)
    (out_dir / f"{stem}.json").write_text(dumps_strict(_strip_arrays(record)))
    (out_dir / f"{stem}.md").write_text(table + "\n")
    return table


__all__ = ["code_state", "run", "write"]

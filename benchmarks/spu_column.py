"""The SecretFlow-SPU row of the layer table: `spu_layer.py` run with SPU's own venv.

SPU (PUMA's home) is measured on the same weights and input as ours and CrypTen's, in
the same bench run, when `make spu` has created `.venv-spu`; otherwise the row says how
to get it. Its bytes are party 0's "send bytes" from SPU's own link counter (sent only;
received is reported apart), its rounds column holds SPU's "send actions" (messages sent
by party 0, which is how SPU counts).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]  # the repository root (benchmarks/..)
SPU_PYTHON = ROOT / ".venv-spu" / "bin" / "python"
SCRIPT = Path(__file__).with_name("spu_layer.py")
IMPLEMENTATION = (
    "SecretFlow-SPU 0.9.5, its own approximations (2PC SEMI2K, 64-bit ring, 18 bits; "
    "GELU tanh form)"
)
LINK = re.compile(
    r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), "
    r"recv actions (\d+)"
)
MB = 1e6


def spu_row(
    weights: dict[str, np.ndarray],
    x: torch.Tensor,
    heads: int,
    eps: float,
    reference: torch.Tensor,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """SPU's measurement of the layer, or {"error": why it did not run}."""
    if not SPU_PYTHON.exists():
        return {"error": "SPU not installed (`make spu` puts it in .venv-spu)"}
    with tempfile.TemporaryDirectory(prefix="secinfer-spu-") as tmp:
        given, got = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        arrays = {name: value.astype(np.float32) for name, value in weights.items()}
        np.savez(given, x=x.numpy().astype(np.float32), heads=heads, eps=eps, **arrays)
        try:
            done = subprocess.run(
                [
                    str(SPU_PYTHON),
                    "-P",
                    str(SCRIPT),
                    str(given),
                    str(got),
                ],  # -P: no script dir on sys.path
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"SPU did not finish within {timeout:.0f} s"}
        log = done.stdout + done.stderr
        found = LINK.findall(log)
        if done.returncode != 0 or not found or not got.exists():
            tail = log.strip().splitlines()[-1:] or ["no output"]
            return {"error": f"SPU failed: {tail[0][:200]}"}
        sent, received, actions, _ = (int(v) for v in found[-1])
        result = np.load(got)
        y = torch.from_numpy(result["y"]).double()
    return {
        "implementation": IMPLEMENTATION,
        "max_abs_error": float((y - reference).abs().max()),
        "cosine": float(F.cosine_similarity(y.flatten(), reference.flatten(), dim=0)),
        "mb_sent_per_party": sent / MB,
        "mb_received_per_party": received / MB,
        "send_actions": actions,
        "seconds": float(result["seconds"]),
    }


__all__ = ["spu_row"]

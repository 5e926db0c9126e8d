"""The private-evaluation bench: what each loss costs under MPC, per 1,000 examples.

One run of the three parties (model owner, data owner, dealer; 16 fractional bits): the
data owner shares 1,000 logit rows of 10 classes (trained-classifier-like: N(0, 4^2) with a
margin on the label, within +-15) and their one-hot labels; each loss of
`protocols.mpc.losses` then runs alone on them, metered (MB sent per party, rounds, the
slower party's seconds), and so does accuracy; sparsemax runs twice, its threshold by the
sort network (the default) and by bisection (`VARIANTS`). The per-example values are
opened here only to report the error of their sum against the plaintext reference; an
evaluation opens the sum alone. Absolute seconds on a 2-core machine are noise; bytes and
rounds are exact.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from approximations.losses import (
    LOSS_NAMES,
    LossOptions,
    reference,
    softmax_log_polynomial,
    zloss_softplus_polynomial,
)
from protocols.mpc.runtime import Role

ROWS, CLASSES = 1000, 10
NAMES = LOSS_NAMES
VARIANTS = {
    "sparsemax (bisection)": ("sparsemax", {"sort_sparsemax": False}),
    "ce (FSS comparisons)": ("ce", {"fss_bits": 64}),
    "mae (FSS comparisons)": ("mae", {"fss_bits": 64}),
    "accuracy (FSS comparisons)": ("accuracy", {"fss_bits": 64}),
}
"""Rows beyond the kernels' own defaults (CrypTen's comparisons): label -> (loss,
`MpcLossKernels` settings); `fss_bits` 64 is what `secinfer eval -b mpc` uses by default
(`secinfer.backends.mpc.evaluation.loss_kernels`)."""
BASELINE = "ce"
"""What the table's ratios divide by."""
OPTIONS = LossOptions(zloss_a=1.0, zloss_b=1.0, gce_q=0.7)


def make_data(rows: int = ROWS, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, rows)
    logits = rng.normal(size=(rows, CLASSES)) * 4.0
    logits[np.arange(rows), labels] += rng.uniform(0.0, 12.0, rows)
    return np.round(np.clip(logits, -15.0, 15.0) * 2**16) / 2**16, labels


def loss_party(role: Role, logits: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """Each loss (and accuracy) alone on the shared data; its traffic and opened sum."""
    from benchmarks.party_helpers import share
    from protocols.mpc import losses
    from protocols.mpc.meter import Meter
    from protocols.mpc.reveal import reveal_to

    onehot = np.eye(CLASSES)[labels]
    x, t = share(logits, Role.DATA_OWNER, role), share(onehot, Role.DATA_OWNER, role)
    softmax_log_polynomial(CLASSES)
    zloss_softplus_polynomial(OPTIONS.zloss_a, OPTIONS.zloss_b, CLASSES)
    meter = Meter().install()
    rows = []
    runs = [(name, name, {}) for name in (*NAMES, "accuracy")]
    runs += [(label, name, kw) for label, (name, kw) in VARIANTS.items()]
    try:
        for label, name, settings in runs:
            names = [] if name == "accuracy" else [name]
            before, began = meter.snapshot(), time.perf_counter()
            values = losses.per_example(
                x, t, names, a=OPTIONS.zloss_a, b=OPTIONS.zloss_b, q=OPTIONS.gce_q,
                accuracy=name == "accuracy", kernels=losses.MpcLossKernels(**settings),
            )  # fmt: skip
            total = values["hit" if name == "accuracy" else name].sum()
            seconds = time.perf_counter() - began
            cost = meter.snapshot() - before
            opened = reveal_to(total, int(Role.DATA_OWNER))
            rows.append(
                {
                    "loss": label,
                    "of": name,
                    "seconds": seconds,
                    "traffic": cost.to_dict(),
                    "sum": None if opened is None else float(opened),
                }
            )
    finally:
        meter.remove()
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    from protocols.mpc.local import run_local

    rows = 100 if quick else ROWS
    logits, labels = make_data(rows)
    began = time.perf_counter()
    parties = run_local(loss_party, logits, labels, timeout=900.0)
    mine, theirs = parties[Role.DATA_OWNER].value, parties[Role.MODEL_OWNER].value
    x, y = torch.as_tensor(logits), torch.as_tensor(labels)
    results = []
    scale = ROWS / rows
    for ours, other in zip(mine, theirs, strict=True):
        name = ours["of"]
        if name == "accuracy":
            want = float((x.argmax(-1) == y).sum())
        else:
            want = float(reference(name, OPTIONS)(x, y)) * rows
        results.append(
            {
                "loss": ours["loss"],
                "relative_error_of_sum": abs(ours["sum"] - want) / max(abs(want), 1e-12),
                "mb_per_party_per_1000": max(
                    ours["traffic"]["bytes_sent"], other["traffic"]["bytes_sent"]
                )
                * scale
                / 1e6,
                "rounds": max(ours["traffic"]["rounds"], other["traffic"]["rounds"]),
                "seconds_per_1000": max(ours["seconds"], other["seconds"]) * scale,
            }
        )
    return {"rows": rows, "classes": CLASSES, "losses": results,
            "seconds": time.perf_counter() - began}  # fmt: skip


def markdown(record: dict[str, Any]) -> str:
    head = (
        f"**Private evaluation under MPC: each loss alone, per 1,000 examples** ({CLASSES} "
        f"classes, measured on {record['rows']} rows; rounds do not grow with the rows; the "
        "error is that of the opened sum against the plaintext reference):"
    )
    rows = [
        f"| loss | MB sent per party | x {BASELINE} | rounds | x {BASELINE} | seconds | "
        "relative error of the sum |",
        "|---|---|---|---|---|---|---|",
    ]
    base = next(r for r in record["losses"] if r["loss"] == BASELINE)
    for r in record["losses"]:
        rows.append(
            f"| {r['loss']} | {r['mb_per_party_per_1000']:.2f} | "
            f"{r['mb_per_party_per_1000'] / base['mb_per_party_per_1000']:.2f} | {r['rounds']} | "
            f"{r['rounds'] / base['rounds']:.2f} | {r['seconds_per_1000']:.2f} | "
            f"{r['relative_error_of_sum']:.1e} |"
        )
    note = (
        "sparsemax and entmax15 (Fenchel-Young) run through their duals; sparsemax's "
        "threshold by Batcher's sort network, exact (the default up to 16 classes), or by "
        "bisection, as entmax15's (`approximations.losses`). A model's forward pass comes "
        "on top (the digits model: `secinfer eval -b mpc`). Under `he`: the HE table below "
        "(`bench/eval_he.md`)."
    )
    return "\n".join([head, "", *rows, "", note])

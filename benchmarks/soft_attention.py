"""SOFT attention on the digits model: accuracy against softmax attention, and its cost
under `mpc` and `he` against exp softmax and power-softmax on the same model, in one run.

Two families, each the same model but for its attention:

    mpc  the bundled `digits` model (exact GELU and LayerNorm; the mpc kernels approximate
         them): exp softmax (as bundled), power-softmax and SOFT (both converted from it
         and fine-tuned)
    he   the bundled `digits_he` model (quad GELU, polynomial LayerNorm): power-softmax (as
         bundled), exp softmax and SOFT (converted from it and fine-tuned)

Fine-tuning: `EPOCHS` epochs of distillation from the bundled softmax model
(`secinfer.zoo.soft.distilled`, seed fixed, one thread: deterministic). SOFT:
`secinfer.zoo.soft.soft_digits`, `approximations.convert(model, attention="soft")` with
its defaults (4 landmarks, 8 Newton-Schulz iterations, symmetric normalisation; the
"kernel" order for he).
Accuracy: the 360 test images in float32. Cost: each variant saved in the zoo's format
and run by the secure backend's parties as local processes
(`secinfer.launch.run.run_secure`, what `secinfer run` does) on the first `IMAGES` test
images: bytes sent per party and rounds (mpc), seconds, refreshes and bytes (he), the
largest logit error against plaintext. Absolute seconds on a 2-core
machine are noise; bytes, rounds and refreshes are exact.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import secinfer
from approximations.conversion import convert
from approximations.modules import PowerSoftmax

DATA = Path(secinfer.__file__).resolve().parent / "data"
TEACHER = DATA / "digits.safetensors"
EPOCHS = 30
IMAGES, QUICK_IMAGES = 32, 2
FAMILIES = {
    "mpc": ("digits", ("softmax", "power-softmax", "SOFT")),
    "he": ("digits_he", ("power-softmax", "softmax", "SOFT")),
}


def variant(family: str, attention: str, epochs: int = EPOCHS) -> tuple[nn.Module, dict]:
    """The model of `family` with `attention`, and the conversion record that rebuilds it
    (`secinfer.zoo.digits.save_model`)."""
    from secinfer.zoo.digits import load_model, read_metadata
    from secinfer.zoo.soft import KEPT, distilled, soft_digits

    base_path, teacher_path = DATA / f"{FAMILIES[family][0]}.safetensors", TEACHER
    if attention == "SOFT":  # the base's own conversion stays; its attention changes
        return soft_digits(base_path, teacher_path, target=family, epochs=epochs)
    base = load_model(base_path).eval()
    conversion = read_metadata(base_path).get("conversion") or {}
    if attention == ("softmax" if family == "mpc" else "power-softmax"):
        return base, conversion
    if attention == "power-softmax":
        model, _ = convert(base, gelu=None, softmax="power", layernorm=None)
        record = {"gelu": None, "softmax": "power", "layernorm": None}
    else:  # exp softmax in place of the he model's power-softmax
        model = copy.deepcopy(base)
        for module in model.modules():
            for name, child in list(module.named_children()):
                if isinstance(child, PowerSoftmax):
                    setattr(module, name, nn.Softmax(dim=-1))
        record = {**{k: conversion.get(k) for k in KEPT}, "softmax": None}
    return distilled(model, load_model(teacher_path).eval(), epochs), record


def _secure_cost(backend: str, path: Path, images: int) -> dict[str, Any]:
    """The secure run's figures, or {"refused": the backend's one-line reason}."""
    from secinfer import load
    from secinfer.backends.base import RunOptions
    from secinfer.errors import UserError
    from secinfer.launch import run as runner
    from secinfer.zoo.digits import load_split

    loaded = load.load_model(path)
    x = load_split(0)[2][:images]
    try:
        outcome = runner.run_secure(
            backend, path, loaded.program, (x,), samples=loaded.calibration_samples(),
            model_name=path.name, output_name=loaded.output_name,
            options=RunOptions(peer_timeout=600.0),
        )  # fmt: skip
    except UserError as exc:  # a backend that refuses the graph says why, in one line
        return {"refused": str(exc)}
    report = outcome.report
    row: dict[str, Any] = {
        "seconds": report["seconds"],
        "max_abs_error": report["max_abs_error"],
    }
    if backend == "mpc":
        sent = report["comm"]["bytes_sent"]
        row["mb_per_party"] = max(sent.values()) / 1e6
        row["rounds"] = report["comm"]["rounds"]
    else:
        depth, sent = report["he"]["depth"], report["he"]["bytes"]
        row["refreshes"] = depth["refreshes"]
        row["mb_sent"] = (sent["server_to_client"] + sent["client_to_server"]) / 1e6
    return row


def run(quick: bool = False) -> dict[str, Any]:
    from secinfer.zoo.digits import accuracy, load_split, save_model

    torch.set_num_threads(1)
    began = time.perf_counter()
    _, _, test_x, test_y = load_split(0)
    epochs = 2 if quick else EPOCHS
    images = QUICK_IMAGES if quick else IMAGES
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for family, (_, attentions) in FAMILIES.items():
            for attention in attentions:
                model, record = variant(family, attention, epochs)
                path = save_model(model, Path(folder) / f"{family}-{attention}", record)
                row = {"backend": family, "attention": attention,
                       "accuracy": accuracy(model, test_x, test_y)}  # fmt: skip
                row.update(_secure_cost(family, path, images))
                rows.append(row)
    torch.set_num_threads(2)
    return {"epochs": epochs, "images": images, "rows": rows,
            "seconds": time.perf_counter() - began}  # fmt: skip


COLUMNS = {
    "mpc": (
        ("MB sent per party", "mb_per_party", ".2f", True),
        ("rounds", "rounds", "d", True),
        ("seconds", "seconds", ".1f", False),
    ),
    "he": (
        ("refreshes", "refreshes", "d", True),
        ("MB sent (both ways)", "mb_sent", ".1f", True),
        ("seconds", "seconds", ".1f", True),
    ),
}
"""Per backend: (header, row key, format, with a ratio to the backend's first row)."""


def markdown(record: dict[str, Any]) -> str:
    head = (
        f"**SOFT attention on the digits model** (360 test images; SOFT and the converted "
        f"attentions fine-tuned {record['epochs']} epochs by distillation; costs on "
        f"{record['images']} images, the ratios against the first row of each backend):"
    )
    lines = [head]
    for backend, columns in COLUMNS.items():
        rows = [r for r in record["rows"] if r["backend"] == backend]
        base = rows[0]
        headers = [f"{backend}: attention", "accuracy"]
        for header, _, _, ratio in columns:
            headers += [header, "ratio"] if ratio else [header]
        headers.append("max logit error")
        lines += ["", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for r in rows:
            cells = [r["attention"], f"{r['accuracy']:.4f}"]
            if "refused" in r:
                cells += [f"refused: {r['refused']}"] + [""] * (len(headers) - 3)
                lines.append("| " + " | ".join(cells) + " |")
                continue
            for _, key, spec, ratio in columns:
                cells.append(format(r[key], spec))
                if ratio:
                    cells.append(f"{r[key] / base[key]:.2f}" if "refused" not in base else "")
            cells.append(f"{r['max_abs_error']:.1e}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["markdown", "run", "variant"]

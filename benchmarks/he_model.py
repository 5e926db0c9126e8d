"""The HE bench, end to end: the bundled HE-friendly digits model under `he`.

`secinfer.launch.run.run_secure` starts the server and the client as processes on loopback, exactly
as `secinfer run --backend he` does, on the first 100 test images of the digits split
(`quick`: 2). Reported: error and class agreement against the plaintext run of the same
converted graph, seconds, refreshes, levels, operation counts, bytes each way, the public
context, and the per-operation latency table. 100 images x 16 patches take 1600 of the 4096
slots of a ciphertext, so the cost is that of one ciphertext per feature, whatever the batch
up to 256 images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import secinfer
from secinfer.report.he import latency_markdown

MODEL = Path(secinfer.__file__).resolve().parent / "data" / "digits_he.pt2"


def run(quick: bool = False) -> dict[str, Any]:
    from secinfer import load
    from secinfer.backends.base import RunOptions
    from secinfer.launch import run as runner
    from secinfer.zoo.digits import load_split

    loaded = load.load_model(MODEL)
    count = 2 if quick else 100
    images = load_split(0)[2][:count]
    outcome = runner.run_secure(
        "he",
        MODEL,
        loaded.program,
        (images,),
        samples=loaded.calibration_samples(),
        model_name=MODEL.name,
        output_name=loaded.output_name,
        options=RunOptions(peer_timeout=300.0),
    )
    plain = loaded.program.module()(images).detach().double().numpy()
    secure = outcome.output.double().numpy()
    report = outcome.report
    return {
        "images": count,
        "seconds": report["seconds"],
        "max_abs_error": report["max_abs_error"],
        "class_agreement": _agreement(secure, plain),
        "he": report["he"],
    }


def markdown(record: dict[str, Any]) -> str:
    he = record["he"]
    depth, counts, sent = he["depth"], he["counts"], he["bytes"]
    head = (
        f"**HE end to end: the digits model** (`digits_he.pt2`: power-softmax, quad GELU, "
        f"polynomial LayerNorm; {record['images']} test images in one query; server and "
        "client as processes on loopback):"
    )
    table = [
        "| figure | value |",
        "|---|---|",
        f"| seconds (both processes, wall) | {record['seconds']:.1f} |",
        f"| max abs error vs plaintext | {record['max_abs_error']:.2e} |",
        f"| predicted class = plaintext's | {record['class_agreement']}/{record['images']} |",
        f"| levels per ciphertext / refreshes / refreshed ciphertexts | "
        f"{depth['depth_per_context']} / {depth['refreshes']} / {depth['refreshed_ciphertexts']} |",
        f"| ct-ct / ct-pt products, rotations (key switches) | {counts['ct_ct_mults']} / "
        f"{counts['ct_pt_mults']}, {counts['rotations']} ({counts['key_switches']}) |",
        f"| MB server -> client / client -> server | {sent['server_to_client'] / 1e6:.1f} / "
        f"{sent['client_to_server'] / 1e6:.1f} |",
        f"| public context (only the Galois keys the layouts need) | "
        f"{sent['public_context'] / 1e6:.1f} MB |",
    ]
    return "\n".join([head, "", *table, "", "Server time per operation:", "",
                      latency_markdown(he["latency"])])  # fmt: skip


def _agreement(a: np.ndarray, b: np.ndarray) -> int:
    return int((a.argmax(-1) == b.argmax(-1)).sum())

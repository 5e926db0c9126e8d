"""The private-evaluation bench under HE: what each loss costs under CKKS, per 1,000 examples.

The MPC table's data (`loss_costs.make_data`: 1,000 logit rows of 10 classes, within +-15,
and their labels; quick: 100 rows) and hyper-parameters (`loss_costs.OPTIONS`), in a
TenSEAL CKKS context as the HE tests use (N = 8192, chain [60, 40, 40, 60], scale 2^40,
relinearisation keys, Galois keys of the rotation steps the sum over the rows needs only:
1, 2, 4, ..., half the padded rows). The approximations are calibrated on the same logits
(`HeLossPlan.calibrated`). Logits and one-hot labels are encrypted in `Layout.rows`: the
rows in the slots of one ciphertext per class (up to 4096 rows fit), so every cost below
follows the ciphertexts, not the rows.

Each loss of `protocols.he.losses` (then accuracy, the hit count) runs alone on freshly
encrypted inputs: `per_example`, then the sum over the rows (`.sum(0)`, rotations) as the
server sums a batch. Measured: wall seconds (the server's arithmetic plus the refreshes,
whose client side, decrypt and re-encrypt, runs here in-process), refreshes and refreshed
ciphertexts (`MaskingRefresher.stats`), refresh traffic (every ciphertext serialized with
SEAL's `save` as it crosses: masked at the last level to the client, seeded fresh
encryptions back, as `secinfer.backends.he.session` sends them; each is loaded from its bytes on the
other side), ct-ct and ct-pt products and rotations (`engine.cost`), the levels one
example consumes (`HeLossPlan.depth`), and the relative error of the decrypted sum against
the plaintext reference (accuracy: against the argmax hit count). Beside it, in the same
run, the same schedule on float64 torch tensors (best of 3): the HE / plaintext time ratio,
and the error of its sum, which is the approximations' alone (the rest of the HE error is
CKKS noise). Absolute seconds on a 2-core machine are noise; refreshes and bytes are exact.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any

import numpy as np
import torch

from approximations.losses import reference
from benchmarks.loss_costs import CLASSES, NAMES, OPTIONS, ROWS, make_data

POLY_MODULUS = 8192
CHAIN = (60, 40, 40, 60)
SCALE_BITS = 40
QUICK_ROWS = 100
RSQRT_TARGET = 1e-3  # InverseSqrt.polynomial_only's default target


# --- the context ---------------------------------------------------------------------------
def row_sum_steps(rows: int) -> list[int]:
    """The rotation steps of a sum over `rows` slots of stride 1 (padded to 2^k): 1 .. 2^(k-1)."""
    padded = 1 << max(0, math.ceil(math.log2(max(rows, 1))))
    return [1 << k for k in range(int(math.log2(padded)))]


def make_context(rows: int) -> tuple[Any, Any, dict[str, Any]]:
    """The client's private context (relinearisation keys, no Galois keys in TenSEAL's own
    set), the SEAL Galois keys of `row_sum_steps(rows)`, and what they cost."""
    import tenseal as ts
    from tenseal import sealapi

    from protocols.he.galois import galois_elements
    from protocols.he.serial import saved_bytes

    context = ts.context(ts.SCHEME_TYPE.CKKS, POLY_MODULUS, coeff_mod_bit_sizes=list(CHAIN))
    context.global_scale = 2.0**SCALE_BITS
    steps = row_sum_steps(rows)
    began = time.perf_counter()
    generator = sealapi.KeyGenerator(context.seal_context().data, context.secret_key().data)
    elements = galois_elements(context, steps)
    keys = sealapi.GaloisKeys()
    generator.create_galois_keys(elements, keys)
    seconds = time.perf_counter() - began
    info = {
        "poly_modulus_degree": POLY_MODULUS,
        "coeff_mod_bit_sizes": list(CHAIN),
        "scale_bits": SCALE_BITS,
        "galois_steps": steps,
        "galois_keys_seconds": seconds,
        "galois_keys_bytes_seeded": len(saved_bytes(generator.create_galois_keys(elements))),
    }
    return context, keys, info


class Wire:
    """The refresh round trip with an in-process client: ciphertexts cross as bytes (SEAL's
    `save`), counted each way; the client keeps the layout's slots and re-encrypts (seeded
    symmetric encryption, as the real client sends)."""

    def __init__(self, codec: Any) -> None:
        self.codec = codec
        self.data = codec.context.seal_context().data
        self.to_client = 0
        self.to_server = 0
        self.client_seconds = 0.0

    def _load(self, raw: bytes) -> Any:
        from tenseal import sealapi

        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        handle, path = tempfile.mkstemp(suffix=".seal", dir=directory)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(raw)
            ct = sealapi.Ciphertext()
            ct.load(self.data, path)
            return ct
        finally:
            os.unlink(path)

    def __call__(self, cts: list[Any], layout: Any) -> list[Any]:
        from protocols.he.serial import saved_bytes

        sent = [saved_bytes(ct) for ct in cts]
        self.to_client += sum(map(len, sent))
        began = time.perf_counter()
        used = layout.positions().reshape(-1)
        back = []
        for raw in sent:
            values = np.zeros(self.codec.slots)
            values[used] = self.codec.decrypt_slots(self._load(raw))[used]
            back.append(saved_bytes(self.codec.encrypt_slots(values, seeded=True)))
        self.client_seconds += time.perf_counter() - began
        self.to_server += sum(map(len, back))
        return [self._load(raw) for raw in back]


# --- one loss ------------------------------------------------------------------------------
def _plain(o: torch.Tensor, t: torch.Tensor, name: str, plan: Any) -> tuple[float, float]:
    """The schedule on float64 tensors: (best of 3 seconds, the sum)."""
    from protocols.he.losses import per_example

    names, key = ([], "hit") if name == "accuracy" else ([name], name)
    best, total = math.inf, math.nan
    for _ in range(3):
        began = time.perf_counter()
        total = float(per_example(o, t, names, plan, accuracy=name == "accuracy")[key].sum(0))
        best = min(best, time.perf_counter() - began)
    return best, total


def measure(name: str, setup: dict[str, Any]) -> dict[str, Any]:
    """`name` alone on freshly encrypted logits and labels: per example, then the sum."""
    from protocols.he.losses import per_example
    from protocols.he.tensor import HeTensor

    codec, engine, refresher, wire = (setup[k] for k in ("codec", "engine", "refresher", "wire"))
    plan, layout = setup["plan"], setup["layout"]

    def encrypt(values: torch.Tensor) -> HeTensor:
        grid = codec.encrypt(values.numpy(), layout)
        return HeTensor(engine, layout, grid, clean=True, refresher=refresher)

    o, t = encrypt(setup["logits"]), encrypt(setup["onehot"])
    names, key = ([], "hit") if name == "accuracy" else ([name], name)
    stats = refresher.stats
    refreshes, refreshed, refresh_seconds = stats.refreshes, stats.ciphertexts, stats.seconds
    to_client, to_server, client_seconds = wire.to_client, wire.to_server, wire.client_seconds
    cost, switches = engine.cost.to_dict(), engine.key_switches
    began = time.perf_counter()
    value = per_example(o, t, names, plan, accuracy=name == "accuracy")[key]
    per_example_seconds = time.perf_counter() - began
    total = value.sum(0)
    seconds = time.perf_counter() - began
    got = float(np.asarray(codec.decrypt(total.grid, total.layout)).reshape(-1)[0])
    counts = {k: v - cost[k] for k, v in engine.cost.to_dict().items() if k != "depth"}
    plain, plain_sum = _plain(setup["logits"], setup["onehot"], name, plan)
    return {
        "loss": name,
        "depth": plan.depth(name),
        "ciphertexts_per_input": int(o.grid.size),
        "refreshes": stats.refreshes - refreshes,
        "refreshed_ciphertexts": stats.ciphertexts - refreshed,
        "seconds": seconds,
        "per_example_seconds": per_example_seconds,
        "sum_seconds": seconds - per_example_seconds,
        "refresh_seconds": stats.seconds - refresh_seconds,
        "client_seconds": wire.client_seconds - client_seconds,
        "bytes_to_client": wire.to_client - to_client,
        "bytes_to_server": wire.to_server - to_server,
        "counts": {**counts, "key_switches": engine.key_switches - switches},
        "plain_seconds": plain,
        "time_ratio_vs_plain": seconds / plain,
        "sum": got,
        "plain_sum": plain_sum,
    }


def run(quick: bool = False) -> dict[str, Any]:
    from protocols.he.codec import Codec
    from protocols.he.engine import Engine
    from protocols.he.layout import Layout
    from protocols.he.losses import HeLossPlan, per_example
    from protocols.he.refresh import MaskingRefresher, default_mask_bits

    began = time.perf_counter()
    rows = QUICK_ROWS if quick else ROWS
    logits, labels = make_data(rows)
    x, y = torch.as_tensor(logits), torch.as_tensor(labels)
    onehot = torch.nn.functional.one_hot(y, CLASSES).double()
    plan = HeLossPlan.calibrated(
        x, zloss_a=OPTIONS.zloss_a, zloss_b=OPTIONS.zloss_b, gce_q=OPTIONS.gce_q
    )
    per_example(x, onehot, list(NAMES), plan)  # fits and certifies the approximations
    context, keys, context_info = make_context(rows)
    codec, engine = Codec(context), Engine(context)
    engine.galois_keys = keys
    wire = Wire(codec)
    mask_bits = default_mask_bits(CHAIN[0], SCALE_BITS)
    setup = {
        "codec": codec,
        "engine": engine,
        "refresher": MaskingRefresher(engine, wire, mask_bits),
        "wire": wire,
        "plan": plan,
        "layout": Layout.rows((rows, CLASSES), 1),
        "logits": x,
        "onehot": onehot,
    }
    results = []
    for name in (*NAMES, "accuracy"):
        row = measure(name, setup)
        if name == "accuracy":
            want = float((x.argmax(-1) == y).sum())
            row["count_exact"] = round(row["sum"]) == want
        else:
            want = float(reference(name, OPTIONS)(x, y)) * rows
        row["reference"] = want
        row["relative_error_of_sum"] = abs(row["sum"] - want) / max(abs(want), 1e-12)
        row["plain_relative_error_of_sum"] = abs(row["plain_sum"] - want) / max(abs(want), 1e-12)
        results.append(row)
    return {
        "quick": quick,
        "rows": rows,
        "classes": CLASSES,
        "context": {**context_info, "mask_bits": mask_bits, "levels": engine.top_level},
        "plan": plan.to_dict(),
        "rsqrt_max_error": plan.rsqrt.max_error,
        "losses": results,
        "seconds": time.perf_counter() - began,
    }


def markdown(record: dict[str, Any]) -> str:
    rows, ctx = record["rows"], record["context"]
    measured = (
        f"measured on {rows} rows"
        if rows == ROWS
        else f"measured on {rows} rows (quick mode) and reported as measured, not scaled"
    )
    head = (
        f"**Private evaluation under HE: each loss alone, per 1,000 examples** ({CLASSES} "
        f"classes, {measured}; CKKS N={ctx['poly_modulus_degree']}, chain "
        f"{ctx['coeff_mod_bit_sizes']}, scale 2^{ctx['scale_bits']}, {ctx['levels']} levels "
        "per fresh ciphertext; the error is that of the decrypted sum against the plaintext "
        "reference, accuracy's that of the hit count; MB = 10^6 bytes):"
    )
    table = [
        "| loss | depth | refreshes (ciphertexts) | ct-ct products / rotations | seconds | "
        "HE / plaintext time | MB of refresh traffic | relative error of the sum | "
        "same, float64 schedule |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["losses"]:
        mb = (r["bytes_to_client"] + r["bytes_to_server"]) / 1e6
        table.append(
            f"| {r['loss']} | {r['depth']} | {r['refreshes']} ({r['refreshed_ciphertexts']}) | "
            f"{r['counts']['ct_ct_mults']} / {r['counts']['rotations']} | {r['seconds']:.2f} | "
            f"{r['time_ratio_vs_plain']:,.0f}x | {mb:.1f} | {r['relative_error_of_sum']:.1e} | "
            f"{r['plain_relative_error_of_sum']:.1e} |"
        )
    slots = POLY_MODULUS // 2
    note = (
        f"Logits and labels sit as one ciphertext per class with the rows in its {slots} "
        f"slots, so seconds, refreshes and bytes follow the ciphertexts, not the rows: the "
        f"same for any number of rows up to {slots} (the sum over the rows takes "
        f"log2 of the padded rows rotations). Depth: levels one example consumes; each "
        f"refresh gives {ctx['levels']} back. Seconds: the server's arithmetic plus the "
        "refreshes, whose client side (decrypt, re-encrypt) runs in the same process here; "
        "in a real session every refresh is a network round trip to the client. The traffic "
        "counts both directions (masked ciphertexts at the last level to the client, seeded "
        "fresh encryptions back). Plaintext and float64 schedule: the same approximations on "
        "float64 tensors, in the same run (their error is the approximations' alone). A model's "
        "forward pass comes on top (the digits model: `secinfer eval -b he`)."
    )
    errors = (
        "Where the two error columns agree the error is the approximations' own, not CKKS noise."
    )
    rsqrt = record["plan"]["rsqrt"]
    if record["rsqrt_max_error"] > RSQRT_TARGET:
        lo, hi = rsqrt["interval"]
        errors += (
            f" zloss: on the calibrated variance interval [{lo:.3g}, {hi:.4g}] (ratio "
            f"{hi / lo:.2g}) the inverse square root's search finds nothing within its "
            f"{RSQRT_TARGET:g} target; the most accurate configuration tried (a degree-"
            f"{rsqrt['initial_degree']} guess, {rsqrt['iterations']} Newton steps) is "
            f"certified to a relative error of {record['rsqrt_max_error']:.2g} only."
        )
    return "\n".join([head, "", *table, "", note, "", errors])

"""The Iron row of the HE matmul bench (`benchmarks.he_matmul`): Iron's compact packing
(`protocols.he.iron`, BFV coefficient encoding) on the same shapes and data as the slot
packings, and its bytes against the diagonal method's.

Flow, as the protocol would run it: the client quantises X, encrypts its blocks (seeded)
and serializes them; the server loads them, encodes W, multiplies and masks (`seconds`:
this part alone, W's encoding included as for the diagonal method, and also reported apart
as `encode_seconds`); the client loads the outputs, decrypts and reads the wanted
coefficients; the error is measured after the server's mask is taken off (what the slot
re-encryption of the refresh round trip gives, up to CKKS noise).

Bytes against the diagonal method. The diagonal row of the table serializes TenSEAL vectors
as they are (public-key inputs: two polynomials; outputs at the product's level). In a run the
client's fresh ciphertexts travel seeded and a result is switched to the last level before
its refresh, so the fair comparison is with the diagonal's ciphertexts as sent: its counts
(`matmul.diagonal_bsgs_cost`) times the size of a seeded top-level CKKS ciphertext and of
one at the last level, both measured here. Both ratios are recorded; the markdown states the
fair one. The scaling lines use the two cost models with these measured sizes (no run).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import tenseal as ts
from tenseal import sealapi

from protocols.he import iron
from protocols.he import matmul as mm
from protocols.he.codec import Codec
from protocols.he.polynomial import HeCost
from protocols.he.rotation import slot_count
from protocols.he.serial import saved_bytes

PARAMS = iron.IronParams()
SCALING_ROWS = (1, 32, 128, 512, 2048, 4096)
MB = 1e6


@functools.cache
def _client() -> iron.IronClient:
    return iron.IronClient(PARAMS)


@functools.cache
def _server_context() -> sealapi.SEALContext:
    return PARAMS.context()


def diagonal_wire_sizes(private: ts.Context) -> tuple[int, int]:
    """(bytes of one seeded fresh CKKS ciphertext at the top level, bytes of one at the last
    level): what a diagonal input and a refreshed diagonal output weigh on the wire."""
    codec = Codec(private)
    values = np.random.default_rng(0).uniform(-1, 1, codec.slots)
    seeded = len(saved_bytes(codec.encrypt_slots(values, seeded=True)))
    ct = codec.encrypt_slots(values)
    data = private.seal_context().data
    sealapi.Evaluator(data).mod_switch_to_inplace(ct, data.last_parms_id())
    return seeded, len(saved_bytes(ct))


def measure(
    private: ts.Context, x: np.ndarray, w: np.ndarray, expected: np.ndarray
) -> dict[str, Any]:
    """The Iron row: the keys of the other rows, Iron's specifics in `details`."""
    rows, d_in = x.shape
    d_out = w.shape[1]
    client, context = _client(), _server_context()
    plan = iron.iron_cost(rows, d_in, d_out, PARAMS)
    began = time.perf_counter()
    blobs = client.pack(x, plan)
    client_s = time.perf_counter() - began
    inputs = iron.load_inputs(context, blobs)
    cost = HeCost()
    began = time.perf_counter()
    weight = iron.encode_weight(context, w, plan, PARAMS)
    encode_s = time.perf_counter() - began
    outputs = iron.products(context, inputs, weight, plan, cost)
    mask = iron.mask_outputs(context, outputs, plan, PARAMS)
    seconds = time.perf_counter() - began
    sent = [iron.to_bytes(ct) for ct in outputs]
    began = time.perf_counter()
    masked = client.unpack(sent, plan)
    client_s += time.perf_counter() - began
    error = float(np.max(np.abs(masked - mask.values - expected)))
    bytes_in, bytes_out = sum(map(len, blobs)), sum(map(len, sent))

    diagonal = mm.diagonal_bsgs_cost(rows, d_in, d_out, slot_count(private))
    seeded, last = diagonal_wire_sizes(private)
    wire_in, wire_out = diagonal.ciphertexts_in * seeded, diagonal.ciphertexts_out * last
    return {
        "shape": [rows, d_in, d_out],
        "strategy": iron.STRATEGY,
        "skipped": None,
        "seconds": seconds,
        "predicted_seconds": plan.estimated_ms() / 1e3,
        "rotations": cost.rotations,
        "key_switches": plan.key_switches,
        "ct_pt_mults": cost.ct_pt_mults,
        "additions": cost.additions,
        "depth": cost.depth,
        "counts_match_model": cost.ct_pt_mults == plan.cost.ct_pt_mults
        and cost.additions == plan.cost.additions,
        "ciphertexts_in": len(blobs),
        "ciphertexts_out": len(sent),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "max_abs_error": error,
        "client_seconds": client_s,
        "details": {
            "scheme": "BFV",
            "params": PARAMS.to_dict(),
            "blocks": [plan.n_i, plan.n_k, plan.n_o],
            "tiles": list(plan.tiles),
            "encode_seconds": encode_s,
            "error_bound": float(np.max(iron.error_bound(x, w, PARAMS))),
            "server_context_bytes": len(saved_bytes(_encryption_parameters())),
            "hiding_bits_at_64": PARAMS.hiding_bits(64.0),
            "diagonal_wire_bytes_in": wire_in,
            "diagonal_wire_bytes_out": wire_out,
            "bytes_ratio_vs_diagonal_wire": {
                "in": bytes_in / wire_in,
                "out": bytes_out / wire_out,
                "total": (bytes_in + bytes_out) / (wire_in + wire_out),
            },
            "iron_bytes_per_ciphertext": [bytes_in // len(blobs), bytes_out // len(sent)],
            "diagonal_wire_bytes_per_ciphertext": [seeded, last],
        },
    }


def _encryption_parameters() -> sealapi.EncryptionParameters:
    """What the server needs of the client's BFV setting: the parameters, no key."""
    return _server_context().key_context_data().parms()


def ratio_vs_table(rows: list[dict[str, Any]], shape: list[int]) -> dict[str, float] | None:
    """Iron's bytes over the table's diagonal row (as that row serializes) for `shape`."""
    same = {r["strategy"]: r for r in rows if r["shape"] == shape and not r["skipped"]}
    if iron.STRATEGY not in same or "diagonal_bsgs" not in same:
        return None
    a, b = same[iron.STRATEGY], same["diagonal_bsgs"]
    return {
        "in": a["bytes_in"] / b["bytes_in"],
        "out": a["bytes_out"] / b["bytes_out"],
        "total": (a["bytes_in"] + a["bytes_out"]) / (b["bytes_in"] + b["bytes_out"]),
    }


def scaling(row: dict[str, Any], slots: int) -> list[dict[str, Any]]:
    """Predicted total bytes of Iron and of the diagonal (as sent) at (m x d_in)(d_in x d_out)
    for the rows of `SCALING_ROWS`: cost-model ciphertext counts times the sizes measured in
    `row`."""
    _, d_in, d_out = row["shape"]
    per_in, per_out = row["details"]["iron_bytes_per_ciphertext"]
    seeded, last = row["details"]["diagonal_wire_bytes_per_ciphertext"]
    out = []
    for m in SCALING_ROWS:
        plan = iron.iron_cost(m, d_in, d_out, PARAMS)
        diagonal = mm.diagonal_bsgs_cost(m, d_in, d_out, slots)
        a = plan.ciphertexts_in * per_in + plan.ciphertexts_out * per_out
        b = diagonal.ciphertexts_in * seeded + diagonal.ciphertexts_out * last
        out.append({"rows": m, "iron_bytes": a, "diagonal_bytes": b, "ratio": a / b})
    return out


def notes(record: dict[str, Any]) -> list[str]:
    """Markdown lines (no table) under the HE matmul table: Iron's bytes against the
    diagonal's, and how the ratio moves with the rows."""
    rows = [r for r in record["rows"] if r["strategy"] == iron.STRATEGY and not r["skipped"]]
    if not rows:
        return []
    p = rows[0]["details"]["params"]
    lines = [
        f"Iron (`protocols/he/iron.py`): BFV coefficient encoding, N={p['poly_modulus_degree']}, "
        f"primes {p['coeff_mod_bit_sizes']}, t = 2^{p['plain_modulus_bits']}, X and W in fixed "
        f"point (2^-{p['x_frac_bits']}, 2^-{p['w_frac_bits']}); no rotation and no key on the "
        f"server (its context is the parameters: "
        f"{rows[0]['details']['server_context_bytes']} bytes); unused output coefficients "
        f"masked uniformly mod t, outputs with the refresh's mask "
        f"({rows[0]['details']['hiding_bits_at_64']:.0f} bits of hiding for |Y| <= 64). Bytes "
        "client -> server / server -> client against the diagonal method's ciphertexts as a "
        "run sends them (seeded inputs, outputs switched to the last level for the refresh), "
        "same run:",
        "",
    ]
    for r in rows:
        d = r["details"]
        ratio = d["bytes_ratio_vs_diagonal_wire"]
        table = ratio_vs_table(record["rows"], r["shape"])
        rows_, d_in, d_out = r["shape"]
        line = (
            f"- ({rows_}x{d_in})({d_in}x{d_out}), blocks {'x'.join(map(str, d['blocks']))}: "
            f"Iron {r['bytes_in'] / MB:.2f} / {r['bytes_out'] / MB:.2f} MB, diagonal "
            f"{d['diagonal_wire_bytes_in'] / MB:.2f} / {d['diagonal_wire_bytes_out'] / MB:.2f} MB:"
            f" Iron moves {ratio['in']:.2f}x / {ratio['out']:.2f}x ({ratio['total']:.2f}x in all)"
        )
        if table is not None:
            line += f"; {table['total']:.2f}x the table's diagonal row as serialized there"
        lines.append(line + ".")
    big = max(rows, key=lambda r: r["shape"][1] * r["shape"][2])
    scale = scaling(big, record["setting"]["slots"])
    _, d_in, d_out = big["shape"]
    lines += [
        "",
        f"How it moves with the rows m, at (m x {d_in})({d_in} x {d_out}), by the two cost "
        "models and the ciphertext sizes above (Iron's traffic grows as sqrt(m), a slot "
        "packing's as m): Iron / diagonal total bytes "
        + ", ".join(f"m={s['rows']}: {s['ratio']:.2f}x" for s in scale)
        + ".",
    ]
    return lines

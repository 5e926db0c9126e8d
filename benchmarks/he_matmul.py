"""The HE bench: encrypted activations times a plaintext weight matrix, three ways, one run.

What is measured. Y = X W with X (rows x d_in) encrypted under CKKS and W (d_in x d_out)
plain, at N = 8192, chain [60, 40, 40, 60], scale 2^40 (`protocols.he.params`), for the
MiniLM shapes (1x384)(384x384), (32x384)(384x384) and (32x384)(384x1536). X is uniform in
[-1, 1], W ~ N(0, 1/d_in), fixed seed. For each shape the three strategies of
`protocols.he.matmul` run one after the other on the same data: TenSEAL's built-in per-row
product (`builtin_rows`, the baseline), the BSGS diagonal method (`diagonal_bsgs`) and the
feature-major scalar products (`feature_major`); a strategy whose cost model says it does not
fit the slots is skipped and the row says why. Then Iron's compact packing (`iron`: BFV
coefficient encoding, its own context; `benchmarks.he_iron`), with its bytes each way against
the diagonal method's as a run sends them.

The flow is the protocol's: the client encrypts under its private context and serializes;
the server loads the ciphertexts into a PUBLIC context and computes; the client loads the
results back and decrypts. The built-in and feature-major products run on the public context
with all of TenSEAL's Galois keys, `diagonal_bsgs` on one holding only the keys of its two
rotation steps (`protocols.he.galois`), which also shows those keys suffice.

Columns. `seconds`: the server's product alone (wall clock; encryption, serialization and
decryption are outside it, reported in the JSON as client seconds). Rotations, ct-pt
products and additions: what each function counts into its `HeCost` (for the built-in these
are the counts of TenSEAL's C++ loop, which cannot be observed from Python, so they are the
model's). Key switches: the cost model's (`MatmulPlan.key_switches`; with the step-limited
keys of `diagonal_bsgs` one per rotation). Ciphertexts in and out, and their serialized bytes
(TenSEAL's `serialize`, SEAL's zstd compression). Max abs error against numpy float64.
`predicted`: the cost model's single-thread `estimated_ms` (unit costs `UNIT_MS_8192`) next to
the measurement; TenSEAL's built-in runs on its thread pool (both cores), the other two are
single-threaded loops over SEAL calls. Time ratio: seconds over the built-in's seconds.
The public context's bytes are reported with all Galois keys and with only the steps
`diagonal_bsgs` needs.

Absolute times on a 2-core machine are noise (load from other processes moves them by tens
of percent); the ratios between strategies measured in the same run are the figures to read.
`run(quick=True)` uses tiny shapes: a check that everything runs, not a figure.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts

from benchmarks import he_iron
from benchmarks.records import code_state
from protocols.he import matmul as mm
from protocols.he.galois import bsgs_rotation_steps, public_context_with_steps
from protocols.he.params import CkksParams, make_context
from protocols.he.polynomial import HeCost
from secinfer.report.files import dumps_strict

PARAMS = CkksParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40, 60], scale_bits=40)
FULL_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 384, 384), (32, 384, 384), (32, 384, 1536))
QUICK_SHAPES: tuple[tuple[int, int, int], ...] = ((2, 16, 16), (3, 16, 8))
SEED = 0
BASELINE = "builtin_rows"
MB = 1e6


@dataclass
class Contexts:
    """The client's private context and the server's public ones, with their sizes."""

    private: ts.Context
    server_all: ts.Context  # public, all +-2^i Galois keys
    bytes_no_galois: int
    bytes_all_galois: int
    limited: dict[tuple[int, ...], tuple[ts.Context, int]]  # steps -> (public context, bytes)

    def for_bsgs(self, d_in: int) -> ts.Context:
        """The public context holding only the Galois keys `diagonal_bsgs` needs at d_in."""
        steps = tuple(bsgs_rotation_steps(d_in))
        if steps not in self.limited:
            data = (
                public_context_with_steps(self.private, list(steps))
                if steps  # d_in = 1: no rotation, no Galois key
                else self.private.serialize(save_secret_key=False, save_galois_keys=False)
            )
            self.limited[steps] = (ts.context_from(data), len(data))
        return self.limited[steps][0]


def make_contexts() -> Contexts:
    """Private context with relin and all Galois keys, and its public form."""
    private = make_context(PARAMS)
    public_all = private.serialize(save_secret_key=False, save_galois_keys=True)
    no_galois = private.serialize(save_secret_key=False, save_galois_keys=False)
    return Contexts(private, ts.context_from(public_all), len(no_galois), len(public_all), {})


def shape_data(rows: int, d_in: int, d_out: int, seed: int = SEED) -> tuple[np.ndarray, ...]:
    """X uniform in [-1, 1] (rows x d_in), W ~ N(0, 1/d_in) (d_in x d_out), and X W."""
    rng = np.random.default_rng([seed, rows, d_in, d_out])
    x = rng.uniform(-1.0, 1.0, (rows, d_in))
    w = rng.normal(0.0, 1.0 / np.sqrt(d_in), (d_in, d_out))
    return x, w, x @ w


# --- one strategy on one shape ------------------------------------------------------------
def _encrypt(strategy: str, private: ts.Context, x: np.ndarray, d_out: int) -> list:
    if strategy == "builtin_rows":
        return [ts.ckks_vector(private, row.tolist()) for row in x]
    if strategy == "diagonal_bsgs":
        return mm.pack_rows(private, x, d_out)
    return mm.pack_features(private, x)


def _decode(strategy: str, values: list[list[float]], x: np.ndarray, d_out: int) -> np.ndarray:
    rows, d_in = x.shape
    if strategy == "builtin_rows":
        return np.asarray(values)
    if strategy == "diagonal_bsgs":
        return mm.unpack_rows(values, rows, d_in, d_out)
    return np.asarray([v[:rows] for v in values]).T


def _to_server(vectors: list, server: ts.Context) -> tuple[list[ts.CKKSVector], int]:
    """Serialize each client vector and load it under the server's context; total bytes."""
    loaded, total = [], 0
    for i, vec in enumerate(vectors):
        data = vec.serialize()
        total += len(data)
        vectors[i] = None  # free the client's copy as we go
        loaded.append(ts.ckks_vector_from(server, data))
    return loaded, total


def _to_client(outputs: list, private: ts.Context) -> tuple[list[list[float]], int]:
    """Serialize each result, load it under the private context and decrypt; total bytes."""
    values, total = [], 0
    for i, vec in enumerate(outputs):
        data = vec.serialize()
        total += len(data)
        outputs[i] = None
        values.append(ts.ckks_vector_from(private, data).decrypt())
    return values, total


STRATEGIES: dict[str, Callable[..., list[ts.CKKSVector]]] = {
    "builtin_rows": mm.builtin_rows,
    "diagonal_bsgs": mm.diagonal_bsgs,
    "feature_major": mm.feature_major,
}
#: Every row of a shape, in order: the TenSEAL strategies, then Iron (`benchmarks.he_iron`).
ROW_STRATEGIES: tuple[str, ...] = (*STRATEGIES, "iron")
COST_MODELS: dict[str, Callable[[int, int, int, int], mm.MatmulPlan]] = {
    "builtin_rows": mm.builtin_rows_cost,
    "diagonal_bsgs": mm.diagonal_bsgs_cost,
    "feature_major": mm.feature_major_cost,
}


def measure(
    strategy: str, contexts: Contexts, x: np.ndarray, w: np.ndarray, expected: np.ndarray
) -> dict[str, Any]:
    """One strategy on one shape: the row of the table (module docstring, columns)."""
    rows, d_in = x.shape
    d_out = w.shape[1]
    row: dict[str, Any] = {"shape": [rows, d_in, d_out], "strategy": strategy}
    try:
        plan = COST_MODELS[strategy](rows, d_in, d_out, PARAMS.slots)
    except ValueError as error:
        return {**row, "skipped": f"does not fit: {error}"}
    server = contexts.for_bsgs(d_in) if strategy == "diagonal_bsgs" else contexts.server_all
    began = time.perf_counter()
    inputs, bytes_in = _to_server(_encrypt(strategy, contexts.private, x, d_out), server)
    client_s = time.perf_counter() - began
    cost = HeCost()
    began = time.perf_counter()
    outputs = STRATEGIES[strategy](inputs, w, cost)
    seconds = time.perf_counter() - began
    n_in, n_out = len(inputs), len(outputs)
    del inputs
    began = time.perf_counter()
    values, bytes_out = _to_client(outputs, contexts.private)
    client_s += time.perf_counter() - began
    error = float(np.max(np.abs(_decode(strategy, values, x, d_out) - expected)))
    return {
        **row,
        "skipped": None,
        "seconds": seconds,
        "predicted_seconds": plan.estimated_ms() / 1e3,
        "rotations": cost.rotations,
        "key_switches": plan.key_switches,
        "ct_pt_mults": cost.ct_pt_mults,
        "additions": cost.additions,
        "depth": cost.depth,
        "counts_match_model": cost.rotations == plan.cost.rotations
        and cost.ct_pt_mults == plan.cost.ct_pt_mults,
        "ciphertexts_in": n_in,
        "ciphertexts_out": n_out,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "max_abs_error": error,
        "client_seconds": client_s,
        "details": dict(plan.details),
    }


def shape_rows(contexts: Contexts, shape: tuple[int, int, int], seed: int) -> list[dict]:
    """The three strategies and Iron on one shape, with time ratios against the built-in."""
    x, w, expected = shape_data(*shape, seed=seed)
    rows = [measure(s, contexts, x, w, expected) for s in STRATEGIES]
    rows.append(he_iron.measure(contexts.private, x, w, expected))
    base = next((r for r in rows if r["strategy"] == BASELINE and not r["skipped"]), None)
    for r in rows:
        ok = base is not None and not r["skipped"]
        r["time_ratio_vs_builtin"] = r["seconds"] / base["seconds"] if ok else None
    return rows


# --- the record ---------------------------------------------------------------------------
def _context_section(contexts: Contexts) -> dict[str, Any]:
    limited = [
        {"steps": list(steps), "bytes": size, "all_over_chosen": contexts.bytes_all_galois / size}
        for steps, (_, size) in contexts.limited.items()
    ]
    return {
        "no_galois_keys": contexts.bytes_no_galois,
        "all_galois_keys": contexts.bytes_all_galois,
        "all_galois_keys_count": contexts.server_all.galois_keys().data.size(),
        "bsgs_steps_only": limited,
    }


def run(quick: bool = False, seed: int = SEED) -> dict[str, Any]:
    """The whole HE matmul bench; `quick` runs tiny shapes (a smoke check, not figures)."""
    began = time.perf_counter()
    contexts = make_contexts()
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    rows = [r for shape in shapes for r in shape_rows(contexts, shape, seed)]
    return {
        "quick": quick,
        "setting": {
            "params": PARAMS.to_dict(),
            "slots": PARAMS.slots,
            "seed": seed,
            "x": "uniform [-1, 1]",
            "w": "normal(0, 1/d_in)",
            "threads": "TenSEAL thread pool = all cores (built-in mm); others single-thread",
            "mb": "10^6 bytes",
        },
        "rows": rows,
        "contexts": _context_section(contexts),
        "code": code_state(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": time.perf_counter() - began,
    }


# --- markdown -----------------------------------------------------------------------------
def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.{digits}g}"


_HEADER = (
    "| shape (rows x d_in)(d_in x d_out) | strategy | seconds | predicted s | time ratio "
    "vs built-in | rotations | key switches | ct-pt products | ciphertexts in / out "
    "| MB in / out | max abs error |"
)


def _table_row(r: dict[str, Any]) -> str:
    rows, d_in, d_out = r["shape"]
    head = f"| ({rows}x{d_in})({d_in}x{d_out}) | {r['strategy']}"
    if r["skipped"]:
        return head + f" | skipped: {r['skipped'].replace('|', '/')} |" + " - |" * 8
    ratio = r["time_ratio_vs_builtin"]
    return (
        f"{head} | {_num(r['seconds'])} | {_num(r['predicted_seconds'])} "
        f"| {'-' if ratio is None else f'{ratio:.3g}x'} | {r['rotations']} "
        f"| {r['key_switches']} | {r['ct_pt_mults']} "
        f"| {r['ciphertexts_in']} / {r['ciphertexts_out']} "
        f"| {_num(r['bytes_in'] / MB)} / {_num(r['bytes_out'] / MB)} "
        f"| {_num(r['max_abs_error'])} |"
    )


def _context_lines(section: dict[str, Any]) -> list[str]:
    all_mb = section["all_galois_keys"] / MB
    lines = [
        f"Public context (relinearisation keys, no secret key): "
        f"{section['no_galois_keys'] / MB:.2f} MB without Galois keys, {all_mb:.1f} MB with "
        f"TenSEAL's {section['all_galois_keys_count']} keys (steps +-2^i)"
    ]
    for entry in section["bsgs_steps_only"]:
        lines[0] += (
            f"; {entry['bytes'] / MB:.2f} MB with only the steps {entry['steps']} that "
            f"`diagonal_bsgs` rotates by ({entry['all_over_chosen']:.1f}x smaller)"
        )
    lines[0] += "."
    return lines


def markdown(record: dict[str, Any]) -> str:
    """The README-ready table and the context sizes."""
    p = record["setting"]["params"]
    lines = [
        f"**HE: encrypted X times plain W** (CKKS N={p['poly_modulus_degree']}, chain "
        f"{p['coeff_mod_bit_sizes']}, scale 2^{p['scale_bits']}; one run, same data; seconds "
        "= the server's product only; predicted = the cost model's single-thread estimate; "
        "key switches from the cost model; error vs numpy float64; MB = 10^6 bytes):",
        "",
        _HEADER,
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(_table_row(r) for r in record["rows"]),
        "",
        *he_iron.notes(record),
        "",
        *_context_lines(record["contexts"]),
        "",
        "Built-in: TenSEAL's `vec.mm(W)` per row (its C++ loop on its thread pool, both "
        "cores; its counts are the model's). diagonal_bsgs: rows packed "
        "floor(S / (d_in + d_out - 1)) per ciphertext, baby-step giant-step diagonals, run "
        "on the step-limited context. feature_major: one ciphertext per input feature, "
        "d_in d_out scalar products, no rotation. Absolute times on a 2-core machine are "
        "noise; the ratios are the figures to read.",
    ]
    if record.get("quick"):
        lines.insert(0, "_Quick run (tiny shapes): a smoke check, not figures._\n")
    return "\n".join(lines)


def write(record: dict[str, Any], directory: Path) -> str:
    """Write `he.json` and `he.md` into `directory` (`he.quick.*` for a quick run, which
    never replaces real figures); return the markdown."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = "he.quick" if record.get("quick") else "he"
    table = markdown(record)
    (directory / f"{stem}.json").write_text(dumps_strict(record))
    (directory / f"{stem}.md").write_text(table + "\n")
    return table


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m benchmarks.he_matmul [--quick] [out_dir]`: run, write, print."""
    args = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in args
    rest = [a for a in args if a != "--quick"]
    print(write(run(quick=quick), Path(rest[0] if rest else "bench")))


if __name__ == "__main__":
    main()

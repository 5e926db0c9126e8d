"""What hiding costs under HE: 40 bits (the default) against 12 (today's slot mask), end to end.

Each row is one `secinfer run --backend he` (server and client as processes on loopback,
`launch.run.run_secure`) with `--hiding-bits` 1 (today's slot mask: R = 2^17, no level
kept, hiding whatever that gives for the model's bound B: 2^17 / B per slot) or 40 on:

- the bundled HE-friendly digits model (`digits_he.pt2`), the images of `he_model` (its
  40-bit row is `he_model`'s own run, passed in, not run twice);
- a small randomly initialised BERT (2 layers, hidden 32, 2 heads, 16 tokens) converted
  with `approximations.convert` (quad GELU, power softmax p = 4, polynomial LayerNorm on
  the variance range of its samples), token ids one-hot; and the same at 40 bits with the
  output flooded (`--flood-bits 20`).

Reported per row: the hiding reached (per slot or per coefficient) for the stated bound B
and the mode, the ring degree and chain the server chose (`backends.he.choice`), the levels
left for products and kept for the refresh, refreshes and refreshed ciphertexts, wall
seconds, megabytes each way and of the public context, the error against plaintext, and
the chosen candidate's predicted LAN seconds (the cost model's, beside the measured ones).
Absolute seconds on a loaded 2-core machine are noise; levels, refreshes and bytes are exact.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import secinfer

MODEL = Path(secinfer.__file__).resolve().parent / "data" / "digits_he.pt2"
BITS = (1, 40)
"""1: the cheapest refresh, today's slot mask (R = 2^17 at the bottom level, no level
kept), whatever it hides for the model's B; 40: the default."""
FLOOD_BITS = 20


def _row(name: str, asked: int, flood: int, report: dict[str, Any]) -> dict[str, Any]:
    he = report["he"]
    choice = he.get("params_choice") or {}
    chosen = (choice.get("candidates") or [{}])[0]
    hiding = he.get("hiding") or {}
    return {
        "model": name,
        "asked_bits": asked,
        "flood_bits": flood,
        "hiding_bits": hiding.get("hiding_bits"),
        "per": hiding.get("per"),
        "mode": hiding.get("mode"),
        "value_bound": (hiding.get("value_bound") or {}).get("bound"),
        "value_bound_node": (hiding.get("value_bound") or {}).get("node"),
        "poly_modulus_degree": he["params"]["poly_modulus_degree"],
        "chain": he["params"]["coeff_mod_bit_sizes"],
        "usable_levels": he["depth"]["depth_per_context"],
        "reserved_levels": he["depth"].get("reserved_levels", 0),
        "refreshes": he["depth"]["refreshes"],
        "refreshed_ciphertexts": he["depth"]["refreshed_ciphertexts"],
        "seconds": report["seconds"],
        "bytes_server_to_client": he["bytes"]["server_to_client"],
        "bytes_client_to_server": he["bytes"]["client_to_server"],
        "public_context": he["bytes"]["public_context"],
        "max_abs_error": report["max_abs_error"],
        "predicted_lan": chosen.get("lan"),
        "flood_error_bound": (he.get("flood") or {}).get("slot_error_bound"),
    }


def _run(path: Path, program: Any, inputs: tuple, samples: list, bits: int, flood: int):
    from secinfer.backends.base import RunOptions
    from secinfer.launch import run as runner

    options = RunOptions(peer_timeout=600.0, hiding_bits=bits, flood_bits=flood)
    return runner.run_secure(
        "he", path, program, inputs, samples=samples, model_name=path.name,
        output_name="output", options=options,
    ).report  # fmt: skip


def small_bert(root: Path, quick: bool) -> tuple[Path, Any, tuple, list]:
    """The converted BERT of the module docstring, exported to `root`."""
    import transformers

    import approximations

    torch.manual_seed(0)
    tokens = 8 if quick else 16
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1 if quick else 2, num_attention_heads=2,
        intermediate_size=64, vocab_size=100, max_position_embeddings=64,
    )  # fmt: skip
    bert = transformers.BertModel(config).eval()
    bert.config._attn_implementation = "eager"
    ids = torch.randint(0, 100, (1, tokens))
    mask = torch.ones(1, tokens, dtype=torch.long)
    samples = [(torch.randint(0, 100, (1, tokens)), mask) for _ in range(4)]
    variances = []

    def keep(module: Any, args: Any) -> None:
        variances.append(args[0].detach().var(-1, unbiased=False))

    hooks = [m.register_forward_pre_hook(keep) for m in bert.modules()
             if isinstance(m, torch.nn.LayerNorm)]  # fmt: skip
    with torch.no_grad():
        for sample in samples:
            bert(input_ids=sample[0], attention_mask=sample[1])
    for hook in hooks:
        hook.remove()
    low = min(float(v.min()) for v in variances)
    high = max(float(v.max()) for v in variances)
    converted, _ = approximations.convert(
        bert, gelu="quad", softmax="power", layernorm="poly",
        layernorm_interval=(low / 2, high * 2),
        softmax_options={"p": 4, "normalizer": "mean", "eps": 1e-3, "scale": False},
    )  # fmt: skip

    class Hidden(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=ids, attention_mask=mask).last_hidden_state

    program = torch.export.export(Hidden(converted).eval(), (ids, mask))
    path = root / "bert_he.pt2"
    torch.export.save(program, path)
    return path, program, (ids, mask), samples


def run(quick: bool = False, digits_40: dict[str, Any] | None = None) -> dict[str, Any]:
    """The rows of the module docstring; `digits_40`: `he_model.run`'s record, reused as the
    digits model's 40-bit row (run here when absent)."""
    from secinfer import load
    from secinfer.zoo.digits import load_split

    began = time.perf_counter()
    rows = []
    loaded = load.load_model(MODEL)
    count = 2 if quick else 100
    images = (load_split(0)[2][:count],)
    samples = loaded.calibration_samples()
    for bits in BITS:
        if bits == 40 and digits_40 is not None:
            report = digits_40  # has he, seconds, max_abs_error as a report does
        else:
            report = _run(MODEL, loaded.program, images, samples, bits, 0)
        rows.append(_row(f"digits ({count} images)", bits, 0, report))
    with tempfile.TemporaryDirectory() as root:
        path, program, inputs, bert_samples = small_bert(Path(root), quick)
        name = f"converted BERT ({'1 layer' if quick else '2 layers'}, hidden 32)"
        for bits, flood in [(1, 0), (40, 0), (40, FLOOD_BITS)]:
            report = _run(path, program, inputs, bert_samples, bits, flood)
            rows.append(_row(name, bits, flood, report))
    return {"quick": quick, "rows": rows, "seconds": time.perf_counter() - began}


def markdown(record: dict[str, Any]) -> str:
    head = (
        "**HE: what 40 bits of refresh hiding cost against today's slot mask** (one "
        "`secinfer run --backend he` per row, server and client as processes; hiding per "
        "slot (slot masks) or per plaintext coefficient (coefficient masks) for values up "
        "to B, from the calibration samples; the server chose N and the chain by predicted "
        "cost; MB = 10^6 bytes):"
    )
    table = [
        "| model | asked | hiding bits (per, B) | N, chain | levels products / kept "
        "| refreshes (ciphertexts) | seconds (predicted LAN) | MB server -> client / "
        "client -> server (public context) | max abs error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        asked = "today's slot mask" if r["asked_bits"] == 1 else f"{r['asked_bits']}"
        asked += f", flood 2^{r['flood_bits']}" if r["flood_bits"] else ""
        hiding = "-" if r["hiding_bits"] is None else f"{r['hiding_bits']:.0f}"
        predicted = "" if r["predicted_lan"] is None else f" ({r['predicted_lan']:.1f})"
        table.append(
            f"| {r['model']} | {asked} | {hiding} ({r['per']}, B = {r['value_bound']:g}) | "
            f"{r['poly_modulus_degree']}, {r['chain']} | {r['usable_levels']} / "
            f"{r['reserved_levels']} | {r['refreshes']} ({r['refreshed_ciphertexts']}) | "
            f"{r['seconds']:.1f}{predicted} | {r['bytes_server_to_client'] / 1e6:.1f} / "
            f"{r['bytes_client_to_server'] / 1e6:.1f} ({r['public_context'] / 1e6:.1f}) | "
            f"{r['max_abs_error']:.2e} |"
        )
    flooded = [r for r in record["rows"] if r["flood_bits"]]
    note = ""
    if flooded:
        bound = flooded[0]["flood_error_bound"]
        note = (
            f"\n\nFlooding 2^{FLOOD_BITS} per coefficient: at most {bound:.2g} added to each "
            "output value (Hoeffding, failure 2^-40), no level."
        )
    return "\n".join([head, "", *table]) + note

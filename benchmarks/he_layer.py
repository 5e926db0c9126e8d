"""The HE bench's encoder layer: one MiniLM-size layer under `he`, the cost model's packing
against the feature-major baseline, in one run.

Model: a BERT encoder layer (transformers' `BertLayer`, eager attention) of MiniLM's size,
hidden 384, 12 heads, FFN 1536, weights random at the scale of trained ones (every
linear N(0, 1/fan_in), biases N(0, 0.02^2), LayerNorm gain 1 and bias 0, so that the
activations stay O(1) as in a trained layer rather than shrinking by BERT's 0.02 init),
converted as the README's HE walk-through does (quad GELU, power-softmax p = 4 with the
"mean" normaliser and eps 1e-3, polynomial LayerNorm on the range of var + eps measured on
the calibration inputs, widened 2x each way), exported with `torch.export` on hidden
states of `seq` tokens drawn N(0, 1). One query through `secinfer.launch.run.run_secure`
("he": server and client as processes on loopback, exactly `secinfer run --backend he`),
first with the CLI's defaults (`--packing auto`, `protocols.he.packing`: diagonal linear
layers, attention by the diagonal method, re-layouts at refreshes; `--hiding-bits 40`:
coefficient-mode refreshes, whose re-layouts move the masked integer polynomials through the
canonical embedding, `protocols.he.relayout`), then `--packing auto` and `--packing
feature-major` (the executor's path before: one ciphertext per feature, attention by
replicating a token axis) both at `--hiding-bits 1` (slot-mode refreshes), on the same
model and input (`RUNS`). The speed-up is read at equal hiding, from the two slot-mask
runs: feature-major at 40 bits did not finish its first attention product in 30 minutes
here (node 11 of 127 after 2385 s; auto at 40 bits took about 5.4 minutes in all), which
would stop the bench at the launcher's one-hour limit. Even with slot masks the baseline
runs for a long time, so it is stopped at `BASELINE_CAP` times the slot-mask auto run:
if it gets there, the table says which node it had reached and the ratio is a lower bound.

Reported per packing: wall seconds (both processes), the server's run seconds, bytes each
way, round trips (refreshes, re-layouts among them, and the protocol's own), products per
strategy, operation counts, the per-operation latency table, max abs error and cosine
against plaintext; and feature-major seconds over auto seconds. `quick`: a 32-wide layer
(4 heads) on 8 tokens, a check that both paths run, not a figure. Absolute times on this
2-core machine move with its load; the ratio of the two runs is the figure to read.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from secinfer.errors import PartyError
from secinfer.report.he import latency_markdown

FULL = {"hidden": 384, "heads": 12, "ffn": 1536, "seq": 128}
BASE = {"hidden": 768, "heads": 12, "ffn": 3072, "seq": 128}
"""A BERT-base-size layer: measured under the CLI's defaults only (its feature-major
baseline would run d_in d_out ct-pt products per linear layer, about four times MiniLM's
per layer: the ratio is measured at MiniLM's size)."""
QUICK = {"hidden": 32, "heads": 4, "ffn": 64, "seq": 8}
NEXUS = {"seconds": 857.0, "layers": 12, "megabytes": 164.0}
"""NEXUS (Zhang et al., NDSS 2025): BERT-base, 128 tokens, non-interactive RNS-CKKS with
bootstrapping, one CPU machine: 857 s and 164 MB for 12 layers (other hardware and another
protocol; printed for orientation only)."""
SOFTMAX = {"p": 4, "normalizer": "mean", "eps": 1e-3, "scale": False}
RUNS: dict[str, dict[str, Any]] = {
    "auto": {},
    "slot_masks": {"hiding_bits": 1},
    "feature_major": {"packing": "feature_major", "hiding_bits": 1},
}
"""The runs, each `RunOptions` fields: the CLI's defaults (auto packing, 40-bit hiding),
then auto and feature-major with the least hiding asked (slot-mode refreshes, no level
kept for them): the speed-up's pair (module docstring); the first two give the price of
the 40 bits."""
PACKINGS = tuple(RUNS)
SEED = 0
BASELINE_CAP = 8.0
"""The feature-major run is stopped after this many times the slot-mask auto run's wall
seconds (at least `MIN_CAP`): the issue asks for an 8x speed-up, and a baseline that runs
past the cap shows it (the table then says where the baseline stood when stopped, and the
ratio is printed as a lower bound). An uncapped MiniLM feature-major run would take hours."""
MIN_CAP = 300.0


class EncoderLayer(torch.nn.Module):
    """A `BertLayer` on hidden states (batch, tokens, hidden) -> the same shape."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        import transformers

        config = transformers.BertConfig(
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=ffn,
            num_hidden_layers=1,
        )
        config._attn_implementation = "eager"
        self.layer = transformers.models.bert.modeling_bert.BertLayer(config).eval()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.layer(hidden_states)
        return out[0] if isinstance(out, tuple) else out


def trained_scale(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Weights at the scale of a trained layer (module docstring)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                fan_in = module.weight.shape[1]
                module.weight.normal_(0.0, fan_in**-0.5, generator=generator)
                module.bias.normal_(0.0, 0.02, generator=generator)
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def variance_range(model: torch.nn.Module, inputs: list[torch.Tensor]) -> tuple[float, float]:
    """The range of var + eps the LayerNorms see on `inputs`, widened 2x each way."""
    seen: list[torch.Tensor] = []
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    hooks = [
        m.register_forward_pre_hook(
            lambda m, args: seen.append(args[0].var(-1, unbiased=False) + m.eps)
        )
        for m in norms
    ]
    with torch.no_grad():
        for x in inputs:
            model(x)
    for hook in hooks:
        hook.remove()
    values = torch.cat([v.reshape(-1) for v in seen])
    return float(values.min()) / 2, float(values.max()) * 2


def build(shape: dict[str, int], directory: Path) -> tuple[Path, torch.Tensor]:
    """The converted, exported layer saved in `directory`, and the query's input."""
    import approximations

    generator = torch.Generator().manual_seed(SEED)
    model = EncoderLayer(shape["hidden"], shape["heads"], shape["ffn"]).eval()
    trained_scale(model, generator)
    dims = (1, shape["seq"], shape["hidden"])
    calibration = torch.randn(dims, generator=generator)
    query = torch.randn(dims, generator=generator)
    converted, _ = approximations.convert(
        model, gelu="quad", softmax="power", layernorm="poly",
        layernorm_interval=variance_range(model, [calibration, query]),
        softmax_options=SOFTMAX,
    )  # fmt: skip
    program = torch.export.export(converted.eval(), (calibration,))
    path = directory / "encoder_layer_he.pt2"
    torch.export.save(program, path)
    return path, query


def run(
    quick: bool = False,
    seq: int | None = None,
    packings: tuple[str, ...] = PACKINGS,
    size: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The runs `packings` on one model and input (module docstring); `seq` overrides the
    number of tokens, `size` the layer's (MiniLM's, `FULL`, by default; `QUICK` when
    `quick`)."""
    from secinfer import load
    from secinfer.backends.base import RunOptions
    from secinfer.launch import run as runner

    shape = dict(QUICK if quick else (size or FULL))
    if seq is not None:
        shape["seq"] = seq
    began = time.perf_counter()
    record: dict[str, Any] = {"shape": shape, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="secinfer-he-layer-") as tmp:
        path, query = build(shape, Path(tmp))
        loaded = load.load_model(path)
        for packing in packings:
            settings = {"peer_timeout": 7200.0, **RUNS[packing]}
            paired = record["runs"].get("slot_masks")
            if packing == "feature_major" and paired is not None:
                settings["run_timeout"] = max(MIN_CAP, BASELINE_CAP * paired["seconds"])
            with _progress_tail() as progress:
                try:
                    outcome = runner.run_secure(
                        "he",
                        path,
                        loaded.program,
                        (query,),
                        samples=loaded.calibration_samples(),
                        model_name=path.name,
                        output_name=loaded.output_name,
                        options=RunOptions(**settings),
                    )
                except PartyError as stopped:
                    if "run_timeout" not in settings or "did not finish" not in str(stopped):
                        raise
                    record["runs"][packing] = {
                        "stopped_after": settings["run_timeout"],
                        "progress": progress.last("server progress: node"),
                        "settings": RUNS[packing],
                    }
                    continue
            record["runs"][packing] = {**_summary(outcome.report), "settings": RUNS[packing]}
    if {"slot_masks", "feature_major"} <= set(record["runs"]):
        auto, baseline = record["runs"]["slot_masks"], record["runs"]["feature_major"]
        if "stopped_after" in baseline:
            record["speedup_at_least"] = baseline["stopped_after"] / auto["seconds"]
        else:
            record["speedup"] = baseline["seconds"] / auto["seconds"]
            record["compute_speedup"] = baseline["compute_seconds"] / auto["compute_seconds"]
    record["seconds"] = time.perf_counter() - began
    return record


class _Tail:
    """The stderr lines written while it is installed, passed on unchanged."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.extend(line for line in text.splitlines() if line)
        del self.lines[:-50]
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def last(self, prefix: str) -> str | None:
        """The last line written that starts with `prefix`."""
        return next((line for line in reversed(self.lines) if line.startswith(prefix)), None)


@contextlib.contextmanager
def _progress_tail() -> Iterator[_Tail]:
    """The launcher's progress echo (it prints to `sys.stderr`), kept for a stopped run."""
    tail = _Tail(sys.stderr)
    sys.stderr = tail  # type: ignore[assignment]
    try:
        yield tail
    finally:
        sys.stderr = tail.stream


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    he = report["he"]
    return {
        "seconds": report["seconds"],
        "server_seconds": he["server_seconds"],
        "compute_seconds": sum(row["seconds"] for row in he["latency"].values()),
        "max_abs_error": report["max_abs_error"],
        "cosine": report["cosine"],
        "bytes": he["bytes"],
        "round_trips": he["round_trips"],
        "refreshes": he["depth"]["refreshes"],
        "refreshed_ciphertexts": he["depth"]["refreshed_ciphertexts"],
        "hiding_bits": (he.get("hiding") or {}).get("hiding_bits"),
        "ring": he["params"]["poly_modulus_degree"],
        "packing": he.get("packing", {}),
        "counts": he["counts"],
        "latency": he["latency"],
        "estimates": report["estimates"],
    }


def markdown(record: dict[str, Any]) -> str:
    shape = record["shape"]
    head = (
        f"**HE end to end: one encoder layer of MiniLM size** (hidden {shape['hidden']}, "
        f"{shape['heads']} heads, FFN {shape['ffn']}, {shape['seq']} tokens; random weights at "
        "trained scale, converted as the README's walk-through; one query, server and client "
        "as processes on loopback through `secinfer run --backend he`; the same model and "
        "input in every run):"
    )
    names = {
        "auto": "CLI defaults: cost model per layer (auto), 40-bit hiding",
        "slot_masks": "cost model per layer (auto), slot masks (--hiding-bits 1)",
        "feature_major": "feature-major only, slot masks (--hiding-bits 1)",
    }
    rows = [
        "| packing | ring N | hiding bits | seconds (wall) | server compute s | MB server -> "
        "client / client -> server | round trips | refreshes (re-layouts) | products by "
        "strategy | rotations | max abs error | cosine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for packing, run_ in record["runs"].items():
        if "stopped_after" in run_:
            where = run_["progress"] or "no progress line"
            rows.append(
                f"| {names.get(packing, packing)} | - | - | stopped after "
                f"{run_['stopped_after']:.0f} s (the cap: {BASELINE_CAP:g}x the slot-mask auto "
                f"run), at {where} | - | - | - | - | - | - | - | - |"
            )
            continue
        chosen = run_["packing"].get("products", {})
        strategies = ", ".join(f"{n} {k}" for k, n in sorted(chosen.items())) or "-"
        rows.append(
            f"| {names.get(packing, packing)} | {run_['ring']} | {_bits(run_['hiding_bits'])} | "
            f"{run_['seconds']:.1f} | "
            f"{run_['compute_seconds']:.1f} | "
            f"{run_['bytes']['server_to_client'] / 1e6:.1f} / "
            f"{run_['bytes']['client_to_server'] / 1e6:.1f} | {run_['round_trips']} | "
            f"{run_['refreshes']} ({run_['packing'].get('relayouts', 0)}) | {strategies} | "
            f"{run_['counts']['rotations']} | {run_['max_abs_error']:.2e} | "
            f"{run_['cosine']:.6f} |"
        )
    tables = [head, "", *rows]
    if "speedup" in record:
        tables += [
            "",
            f"Feature-major over auto (both with slot masks): {record['speedup']:.1f}x wall, "
            f"{record['compute_speedup']:.1f}x server compute (refresh round trips included).",
        ]
    elif "speedup_at_least" in record:
        tables += [
            "",
            f"Feature-major over auto (both with slot masks): more than "
            f"{record['speedup_at_least']:.1f}x wall (feature-major was stopped unfinished at "
            "its cap; the ratio is a lower bound).",
        ]
    for packing, run_ in record["runs"].items():
        if "stopped_after" in run_:
            continue
        tables += ["", f"Server time per operation, {names.get(packing, packing)}:", "",
                   latency_markdown(run_["latency"])]  # fmt: skip
    return "\n".join(tables)


def base_markdown(record: dict[str, Any]) -> str:
    """The BERT-base-size layer's line, with NEXUS's published figure beside it."""
    shape = record["shape"]
    run_ = record["runs"]["auto"]
    per_layer = NEXUS["seconds"] / NEXUS["layers"]
    megabytes = (run_["bytes"]["server_to_client"] + run_["bytes"]["client_to_server"]) / 1e6
    return (
        f"**One BERT-base-size layer** (hidden {shape['hidden']}, {shape['heads']} heads, FFN "
        f"{shape['ffn']}, {shape['seq']} tokens; as above, CLI defaults: auto packing, "
        f"40-bit hiding): {run_['seconds']:.1f} s wall ({run_['compute_seconds']:.1f} s of "
        f"server compute), ring N={run_['ring']}, {megabytes:.1f} MB in all "
        f"({run_['bytes']['server_to_client'] / 1e6:.1f} server -> client, "
        f"{run_['bytes']['client_to_server'] / 1e6:.1f} client -> server), "
        f"{run_['round_trips']} round trips ({run_['refreshes']} refreshes, "
        f"{run_['packing'].get('relayouts', 0)} re-layouts), {run_['counts']['rotations']} "
        f"rotations, max abs error {run_['max_abs_error']:.2e}, cosine {run_['cosine']:.6f}. "
        f"NEXUS (NDSS 2025) publishes {NEXUS['seconds']:.0f} s and {NEXUS['megabytes']:.0f} MB "
        f"for {NEXUS['layers']} BERT-base layers ({per_layer:.0f} s a layer; non-interactive "
        "with bootstrapping, other hardware: for orientation only).\n\nServer time per "
        "operation:\n\n" + latency_markdown(run_["latency"])
    )


def _bits(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main() -> None:  # pragma: no cover - a manual entry point for one shape
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--base", action="store_true", help="the BERT-base-size layer")
    parser.add_argument("--packings", default=",".join(PACKINGS))
    args = parser.parse_args()
    size = BASE if args.base else None
    packings = tuple(args.packings.split(","))
    record = run(quick=args.quick, seq=args.seq, packings=packings, size=size)
    print(json.dumps(record, indent=1, default=float))
    print(base_markdown(record) if args.base else markdown(record))


if __name__ == "__main__":  # pragma: no cover
    np.set_printoptions(precision=4)
    main()

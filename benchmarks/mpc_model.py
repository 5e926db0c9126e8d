"""A whole encoder through the product's CLI under mpc: a 6-layer Hugging Face BERT of
MiniLM's shape (hidden 384, 12 heads, FFN 1536), 128 tokens, its layers' weights scaled
to trained-model ranges as the layer benchmark's (`benchmarks.inputs.EncoderLayer`), run
by `secinfer run DIR --backend mpc` with the default plan (FSS comparisons) and with
`--config` comparisons crypten, in one run: bytes, rounds, cosine against plaintext, and
the FSS keys. No pretrained weights can be downloaded on these machines; the scaling
gives the activations a trained model's outliers (GELU inputs beyond +-10, attention
scores beyond +-20)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.cases import LAYER_SIZES, TINY_LAYER, LayerSize
from benchmarks.inputs import EncoderLayer
from benchmarks.layer import CRYPTEN_COMPARISONS

LAYERS = 6
TOKENS_VOCABULARY = 1000


def encoder(size: LayerSize, layers: int, seed: int = 0) -> torch.nn.Module:
    """A BertModel whose encoder layers are `EncoderLayer`s' (scaled) weights."""
    import transformers

    cfg = transformers.BertConfig(
        hidden_size=size.hidden,
        num_hidden_layers=layers,
        num_attention_heads=size.heads,
        intermediate_size=size.intermediate,
        vocab_size=TOKENS_VOCABULARY,
        max_position_embeddings=max(512, size.seq),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for i, layer in enumerate(model.encoder.layer):
            layer.load_state_dict(EncoderLayer(size, seed + 1 + i).layer.state_dict())
    return model


def _run(directory: Path, inputs: Path, report: Path, config: Path | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "secinfer.cli", "run", str(directory), "--backend", "mpc",
               "--input", str(inputs), "--report", str(report)]  # fmt: skip
    if config is not None:
        command += ["--config", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    record = json.loads(report.read_text())
    comm = record["comm"]
    sent = comm["bytes_sent"]
    return {
        "max_abs_error": record["max_abs_error"],
        "cosine": record["cosine"],
        "seconds": record["seconds"],
        "rounds": comm["rounds"],
        "mb_sent_per_party": max(sent["model_owner"], sent["data_owner"]) / 1e6,
        "dealer_mb": sent["dealer"] / 1e6,
        "fss_keys": comm.get("fss_keys", {}),
        "estimates": record["estimates"],
    }


def model_section(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Both runs of the same model and input (`quick`: 2 tiny layers, a check only)."""
    size = TINY_LAYER if quick else LAYER_SIZES[0]
    layers = 2 if quick else LAYERS
    model = encoder(size, layers, seed)
    ids = torch.randint(
        0, TOKENS_VOCABULARY, (1, size.seq), generator=torch.Generator().manual_seed(seed)
    )
    with tempfile.TemporaryDirectory(prefix="secinfer-model-") as tmp:
        root = Path(tmp)
        model.save_pretrained(root / "model")
        torch.save({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, root / "in.pt")
        config = root / "crypten.json"
        config.write_text(json.dumps(CRYPTEN_COMPARISONS))
        runs = {
            "ours": _run(root / "model", root / "in.pt", root / "a.json", None),
            "ours_crypten_comparisons": _run(
                root / "model", root / "in.pt", root / "b.json", config
            ),
        }
    return {"size": {**asdict(size), "layers": layers}, **runs}


def markdown(section: dict[str, Any]) -> list[str]:
    s = section["size"]
    lines = [
        "",
        f"**A whole encoder through the CLI** ({s['layers']}-layer Hugging Face BertModel, "
        f"hidden {s['hidden']}, {s['heads']} heads, FFN {s['intermediate']}, {s['seq']} "
        "tokens, weights scaled to trained-model ranges; `secinfer run DIR --backend mpc`, "
        "one query, default settings; its FSS keys are dealt as it asks, a session's later "
        "queries of the same shape get them before their input):",
        "",
        "| plan | max abs error | cosine | rounds | MB sent / party | dealer MB "
        "| FSS keys forwarded MB | key seconds | seconds | MB ratio | rounds ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = section.get("ours_crypten_comparisons", {})
    for key, label in (
        ("ours", "default (FSS comparisons)"),
        ("ours_crypten_comparisons", "--config comparisons crypten"),
    ):
        r = section.get(key, {})
        if "error" in r or not r:
            lines.append(f"| {label} | did not run: {r.get('error', '-')} |" + " |" * 9)
            continue
        keys = r.get("fss_keys", {})
        ratio = (
            f"{r['mb_sent_per_party'] / base['mb_sent_per_party']:.3g}x "
            f"| {r['rounds'] / base['rounds']:.3g}x"
            if base and "error" not in base
            else "- | -"
        )
        lines.append(
            f"| {label} | {r['max_abs_error']:.3g} | {r['cosine']:.5f} | {r['rounds']} "
            f"| {r['mb_sent_per_party']:.3g} | {r['dealer_mb']:.3g} "
            f"| {keys.get('forwarded_mb', 0.0):.3g} | {keys.get('seconds', 0.0):.3g} "
            f"| {r['seconds']:.3g} | {ratio} |"
        )
    return lines


__all__ = ["encoder", "markdown", "model_section"]

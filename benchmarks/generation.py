"""The generation bench: greedy decoding under `mpc` with the key/value cache, against
re-running the growing prefix, in one run.

Model: one GPT-2-small-size block as a causal LM (hidden 768, 12 heads, FFN 3072, GPT-2's
vocabulary of 50257 and 1024 positions; `n_layer` 1, so a 12-layer model's per-token
cost is about 12 times the block's part of it), weights at trained scale
(`secinfer.zoo.scale.trained_scale`: projections N(0, g^2 / fan_in),
embeddings N(0, 1)), saved as a Hugging Face directory. The prompt has PROMPT tokens, so
the first new token attends over 127 and the second over 128 (the issue's context).

  cached    `secinfer generate --backend mpc` (`launch.generate.generate_secure`): the
            prefill, then per token the step program on one row plus the one-hot argmax
            over the vocabulary on shares; the data owner's record gives each token's
            online bytes sent, rounds and seconds, and the prefill's.
  no cache  the same tokens by re-running the prefix: one `secinfer party` session with a
            query per token (the prefill program on the prompt and the tokens before it:
            PROMPT, PROMPT + 1, ... tokens; the weights' masks are opened once for all),
            each query's online bytes, rounds and seconds from the data owner's record,
            plus, per token, the argmax the cached run measured alone (its first token's
            record: the prefill's logits need only the argmax).
The ratios are no-cache over cached, for the online bytes, rounds and seconds of all the
tokens together (the cached side including its prefill). Beside it, for orientation only
(other set-ups, other models): PUMA's LLaMA-7B token in about 200 s over 3 parties
(LAN), SIGMA's GPT-2 inference in 1.6 s on GPUs. `quick`: a 32-wide block with a
vocabulary of 100 and 4 tokens, a check that it runs, not a figure.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secinfer.zoo.scale import trained_scale

FULL = {"hidden": 768, "heads": 12, "vocab": 50257, "positions": 1024, "tokens": 16}
QUICK = {"hidden": 32, "heads": 4, "vocab": 100, "positions": 64, "tokens": 4}
PROMPT = 127
QUICK_PROMPT = 8
PUBLISHED = (
    "PUMA (3 parties, LAN 5 Gbps): one LLaMA-7B token in about 200 s and 1.79 GB; SIGMA "
    "(2 parties and a dealer, GPUs): GPT-2 in 1.6 s per inference. Other set-ups and "
    "models: for orientation only."
)
SEED = 0


def build(shape: dict[str, int], directory: Path) -> Path:
    """The one-block causal LM at trained scale, saved as a Hugging Face directory."""
    import transformers

    config = transformers.GPT2Config(
        n_embd=shape["hidden"],
        n_layer=1,
        n_head=shape["heads"],
        vocab_size=shape["vocab"],
        n_positions=shape["positions"],
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="eager",
    )
    torch.manual_seed(SEED)
    model = transformers.GPT2LMHeadModel(config).eval()
    trained_scale(model, SEED)
    path = directory / "gpt2-block"
    model.save_pretrained(path)
    return path


def run(quick: bool = False) -> dict[str, Any]:
    """Both sides on one model and prompt (module docstring)."""
    from secinfer.backends.base import RunOptions
    from secinfer.launch.generate import generate_secure
    from secinfer.load.decoder import load_decoder

    shape = dict(QUICK if quick else FULL)
    prompt_tokens = QUICK_PROMPT if quick else PROMPT
    began = time.perf_counter()
    record: dict[str, Any] = {"shape": shape, "prompt_tokens": prompt_tokens}
    with tempfile.TemporaryDirectory(prefix="secinfer-generation-") as tmp:
        root = Path(tmp)
        path = build(shape, root)
        generator = torch.Generator().manual_seed(SEED)
        prompt = torch.randint(0, shape["vocab"], (1, prompt_tokens), generator=generator)
        options = RunOptions(peer_timeout=600.0, run_timeout=7200.0)
        generation, parties = generate_secure("mpc", path, prompt, shape["tokens"], options)
        owner = parties["data_owner"]
        record["cached"] = {
            "tokens": generation.tokens,
            "prefill": owner["prefill"],
            "steps": owner["steps"],
            "offline": owner["offline"],
            "wall_seconds": parties["seconds"],
        }
        decoder = load_decoder(path)
        record["plaintext_tokens"] = _plain(decoder, prompt, shape["tokens"])
        record["no_cache"] = _no_cache(decoder, root, prompt, generation.tokens, options)
    record["ratio"] = _ratio(record)
    record["seconds"] = time.perf_counter() - began
    return record


def _plain(decoder: Any, prompt: torch.Tensor, tokens: int) -> list[int]:
    from secinfer.launch.generate import generate_local

    return generate_local(decoder, prompt, tokens, "plain").tokens


def _no_cache(
    decoder: Any,
    root: Path,
    prompt: torch.Tensor,
    tokens: list[int],
    options: Any,
) -> dict[str, Any]:
    """One mpc session of len(tokens) queries: the prefill program on each growing prefix."""
    from secinfer.backends.mpc.local import run_local_queries

    model = root / "prefill.pt2"
    torch.export.save(decoder.prefill, model)
    queries = [
        (torch.cat([prompt, torch.tensor([tokens[:index]], dtype=torch.int64)], 1),)
        for index in range(len(tokens))
    ]
    session = run_local_queries(model, queries, options)
    picked = [int(np.argmax(output.reshape(-1))) for output in session.outputs]
    return {
        "queries": session.data_owner["queries"],
        "offline": session.data_owner["offline"],
        "wall_seconds": session.seconds,
        "tokens": picked,
    }


KEYS = ("bytes_sent", "rounds", "seconds")


def _ratio(record: dict[str, Any]) -> dict[str, float]:
    """No cache over cached, all tokens together (module docstring)."""
    cached = [record["cached"]["prefill"], *record["cached"]["steps"]]
    argmax = record["cached"]["steps"][0]  # the first token: the argmax alone
    queries = record["no_cache"]["queries"]
    out = {}
    for key in KEYS:
        ours = sum(float(step[key]) for step in cached)
        theirs = sum(float(q[key]) + float(argmax[key]) for q in queries)
        out[key] = theirs / ours
    return out


def _row(token: str, context: int, step: dict[str, Any]) -> str:
    """A table row: the step's online figures and `report.mpc.estimate`'s wall times."""
    from secinfer.report.mpc import estimate

    wall = estimate(float(step["seconds"]), int(step["rounds"]), int(step["bytes_sent"]))
    return (
        f"| {token} | {context} | {step['bytes_sent'] / 1e6:.2f} | {step['rounds']} | "
        f"{step['seconds']:.2f} | {wall['lan']:.2f} | {wall['wan']:.2f} |"
    )


def markdown(record: dict[str, Any]) -> str:
    shape, cached, ratio = record["shape"], record["cached"], record["ratio"]
    steps = cached["steps"]
    head = (
        f"**Private generation under mpc** (one GPT-2-small-size block as a causal LM: hidden "
        f"{shape['hidden']}, {shape['heads']} heads, vocabulary {shape['vocab']}; a prompt of "
        f"{record['prompt_tokens']} tokens, {shape['tokens']} greedy tokens; three processes "
        "on loopback with TLS; MB sent by the data owner, online; LAN 1 ms / 5 Gbps and WAN "
        "40 ms / 100 Mbps estimates add rounds x RTT and bytes / bandwidth to the seconds):"
    )
    rows = [
        "| token | context | MB sent | rounds | seconds | LAN s (est.) | WAN s (est.) |",
        "|---|---|---|---|---|---|---|",
        _row("prefill", record["prompt_tokens"], cached["prefill"]),
        *(_row(str(i), step["context"], step) for i, step in enumerate(steps, start=1)),
    ]
    equal = cached["tokens"] == record["plaintext_tokens"]
    no_cache = record["no_cache"]
    same = cached["tokens"] == no_cache["tokens"]
    rows_no_cache = [
        f"| {record['prompt_tokens'] + i} | {q['bytes_sent'] / 1e6:.2f} | {q['rounds']} | "
        f"{q['seconds']:.1f} |"
        for i, q in enumerate(no_cache["queries"])
    ]
    later = [s["bytes_sent"] for s in steps[1:]]
    growth = (later[-1] - later[0]) / max(len(later) - 1, 1) / 1e6 if len(later) > 1 else 0.0
    lines = [
        head,
        "",
        *rows,
        "",
        f"Tokens equal to plaintext greedy: {'yes' if equal else 'no'}; the no-cache run picked "
        f"{'the same' if same else 'other'} tokens. Per token after the first the bytes grow by "
        f"{growth:.3f} MB per token of context (attention over the cache; the rest is fixed). "
        "Re-running the prefix instead (one session, the prefill program on each prefix; MB "
        "sent by the data owner, online, without the argmax):",
        "",
        "| prefix tokens | MB sent | rounds | seconds |",
        "|---|---|---|---|",
        *rows_no_cache,
        "",
        f"Prefill and {len(steps)} tokens with the cache against {len(steps)} forward passes of "
        f"the growing prefix (each plus the argmax): the prefix costs {ratio['bytes_sent']:.1f}x "
        f"the bytes, {ratio['rounds']:.2f}x the rounds and {ratio['seconds']:.1f}x the seconds "
        "(rounds are the programs' depth, which a step shares with a whole pass). "
        f"Offline, once per session (the weights shared, their masks opened): "
        f"{cached['offline']['bytes_sent'] / 1e6:.1f} MB.",
        "",
        PUBLISHED,
    ]
    return "\n".join(lines)


def main() -> None:  # pragma: no cover - a manual entry point
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    record = run(quick=args.quick)
    print(json.dumps(record, indent=1, default=float))
    print(markdown(record), file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    main()

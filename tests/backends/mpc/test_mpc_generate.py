"""`secinfer generate --backend mpc`: greedy generation by the three real parties (model
owner, data owner, dealer as processes over loopback TLS), the key/value cache as shares.

Against plaintext: on a small GPT-2 and a small LLaMA-style model (RMSNorm, SwiGLU,
rotary positions, grouped-query attention) with weights at trained scale
(`helpers.decoders`), the 16 greedy tokens equal transformers' own greedy decoding (the
GPT-2 run, a minute on two cores, in the slow suite: `make test` keeps its 15 minutes). The
report carries each token's online bytes and rounds, and they grow at most linearly with
the context. Bad input stops before any party starts, with one line and exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import decoders

from secinfer.cli import main

PROMPT = [5, 17, 33, 2, 9, 41]


@pytest.fixture(scope="module")
def directories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoders")
    np.save(root / "prompt.npy", np.array(PROMPT))
    paths = {"prompt": root / "prompt.npy"}
    for family in ("gpt2", "llama"):
        model = decoders.decoder(family, kv_heads=2 if family == "llama" else None)
        paths[family] = decoders.save(model, root / family)
        if family == "llama":
            decoders.save_tokenizer(paths[family])
        paths[f"{family}-tokens"] = decoders.greedy(model, torch.tensor([PROMPT]), 16)
    return paths


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("family", [pytest.param("gpt2", marks=pytest.mark.slow), "llama"])
def test_sixteen_tokens_under_mpc_equal_plaintext_greedy(
    directories: dict, family: str, tmp_path: Path
) -> None:
    code, out, err = run_cli(
        "generate", str(directories[family]), "--input", str(directories["prompt"]),
        "--max-new-tokens", "16", "--backend", "mpc",
        "--output", str(tmp_path / "ids.npy"), "--report", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert code == 0, err
    expected = directories[f"{family}-tokens"]
    assert np.load(tmp_path / "ids.npy").tolist() == expected
    assert "tokens equal to plaintext greedy: 16/16" in out
    assert err.count("data-owner progress: token ") == 16  # one line per token, as it came
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tokens"] == expected and report["plaintext"]["equal"]
    steps = report["steps"]
    assert len(steps) == 16 and [s["token"] for s in steps] == expected
    assert [s["context"] for s in steps] == list(range(6, 22))
    later = [s["bytes_sent"] for s in steps[1:]]
    assert all(b > 0 for b in later)
    # rounds follow the softmax's row maximum: a tournament of ceil(log2(keys)) levels
    levels = {}
    for s in steps[1:]:
        levels.setdefault(int(np.ceil(np.log2(s["context"]))), set()).add(s["rounds"])
    assert all(len(r) == 1 for r in levels.values()), levels
    # attention over the cache is the only part that grows: linearly with the context
    growth = np.diff(later)
    assert (growth >= 0).all() and growth.max() <= 2 * max(growth.min(), 1) + 64
    owner = report["parties"]["model_owner"]
    assert owner["tokens"] == []  # the model owner never learns a token
    assert owner["offline"]["weights_opened"] > 0 and report["prefill"]["bytes_sent"] > 0


def test_bad_input_stops_before_the_parties_with_one_line(
    directories: dict, tmp_path: Path
) -> None:
    long = tmp_path / "long.npy"
    np.save(long, np.arange(60) % 100)
    cases = [
        (["--input", str(long), "--max-new-tokens", "8"], "need 68 positions"),
        (["--input", str(directories["prompt"]), "--stop-token", "100"], "--stop-token 100"),
        (["--input", str(directories["prompt"]), "--max-new-tokens", "0"], "give at least 1"),
        (["--input", str(directories["prompt"]), "--temperature", "1", "--top-k", "3"],
         "--top-k 3 under mpc"),
        (["--input", str(directories["prompt"]), "--top-k", "3"], "--temperature T > 0"),
    ]  # fmt: skip
    for args, message in cases:
        code, _, err = run_cli("generate", str(directories["gpt2"]), "-b", "mpc", *args)
        assert code == 2 and message in err, err
        assert err.count("\n") == 1 and "progress" not in err


def test_sampling_under_mpc_equals_plaintext_sampling_with_the_same_noise(
    directories: dict, tmp_path: Path
) -> None:
    """--temperature: the data owner shares its Gumbel noise, the argmax runs on shares;
    with the same seed the tokens equal plaintext sampling (the CLI's reference) and
    differ from greedy decoding. The model owner's record holds no token."""
    code, out, err = run_cli(
        "generate", str(directories["llama"]), "--input", str(directories["prompt"]),
        "--max-new-tokens", "6", "--backend", "mpc", "--temperature", "1.5", "--seed", "4",
        "--report", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert "tokens equal to plaintext sampling (same noise): 6/6" in out
    assert report["sampling"]["seed"] == 4 and report["plaintext"]["equal"]
    assert report["tokens"] != directories["llama-tokens"][:6]
    assert report["parties"]["model_owner"]["tokens"] == []
    # the directory has a tokenizer: the data owner's progress lines show each token's text
    first = report["tokens"][0]
    assert f"data-owner progress: token 1/6: {first} 'w{first}'" in err
    assert report["text"] == " ".join(f"w{t}" for t in report["tokens"])

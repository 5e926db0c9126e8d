"""`secinfer generate --backend he`: greedy generation by the real server and client (two
processes over loopback TLS, real TenSEAL CKKS), the key/value cache as ciphertexts.

The model is a small GPT-2 at trained scale (`helpers.decoders`) converted for HE by
`approximations.convert` (power-softmax attention, polynomial GELU, LayerNorm by
polynomial inverse square root) and written by `save_decoder`. In the default suite 3
tokens sampled with top-k equal plaintext sampling with the same noise (about a minute on
two cores); in the slow suite 16 greedy tokens equal transformers' own greedy decoding of
the converted model, and a second prompt of the same length checks that the server's
view (what it asks of the client and computes, per step) does not depend on the prompt
or the tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import decoders

import approximations
from secinfer.cli import main
from secinfer.load.decoder import decoder_from_model, save_decoder

PROMPT = [5, 17, 33, 2]
OTHER = [71, 8, 60, 29]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("he-decoder")
    model = decoders.decoder("gpt2", layers=1)
    generator = torch.Generator().manual_seed(5)
    samples = [torch.randint(0, 100, (1, 12), generator=generator) for _ in range(8)]
    model, _ = approximations.convert(model, target="he", samples=samples)
    save_decoder(decoder_from_model(model, root / "model"), root / "model")
    paths: dict = {"model": root / "model"}
    for name, prompt in (("prompt", PROMPT), ("other", OTHER)):
        np.save(root / f"{name}.npy", np.array(prompt))
        paths[name] = root / f"{name}.npy"
        paths[f"{name}-tokens"] = decoders.greedy(model, torch.tensor([prompt]), 16)
    return paths


def generate(
    converted: dict, prompt: str, tokens: int, out: Path, *extra: str
) -> tuple[dict, str, str]:
    result = CliRunner().invoke(
        main,
        [
            "generate", str(converted["model"]), "--input", str(converted[prompt]),
            "--max-new-tokens", str(tokens), "--backend", "he",
            "--output", str(out / "ids.npy"), "--report", str(out / "r.json"), *extra,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return json.loads((out / "r.json").read_text()), result.stdout, result.stderr


def test_two_sampled_tokens_under_he_equal_plaintext_sampling(
    converted: dict, tmp_path: Path
) -> None:
    """Sampling with top-k: the client picks from the logits it decrypts, by the rule and
    noise plaintext uses (`core.sampling`); greedy against transformers is the slow test's.
    Two tokens: the prompt's pass and one cached step (the suite's time; the slow test
    runs sixteen)."""
    sampling = ["--temperature", "1", "--top-k", "5", "--seed", "10"]
    report, out, err = generate(converted, "prompt", 2, tmp_path, *sampling)
    expected = report["plaintext"]["tokens"]
    assert np.load(tmp_path / "ids.npy").tolist() == expected == report["tokens"]
    assert "tokens equal to plaintext sampling (same noise): 2/2" in out
    # the logits the client decrypted, against plaintext on the same tokens: CKKS noise
    # and the conversion's own plan (approx's error), not a wrong layout (a replicated
    # cache once put them 4.7 off while the argmax still agreed)
    assert report["logits_max_abs_error"] < 1e-2, report["logits_max_abs_error"]
    assert report["sampling"] == {
        "method": "sample", "temperature": 1.0, "top_k": 5, "seed": 10,
        "rule": report["sampling"]["rule"],
    }  # fmt: skip
    assert len(re.findall(r"client progress: token \d/2: \d+ \(", err)) == 2  # as they came
    steps = report["steps"]
    assert [s["context"] for s in steps] == [4, 5]
    assert steps[0]["bytes_sent"] == 0  # the first token is the client's argmax alone
    assert all(s["bytes_sent"] > 0 for s in steps[1:])
    server = report["parties"]["model_owner"]
    assert "tokens" not in server and server["generation"]["steps_run"] == 1
    assert server["generation"]["max_new_tokens"] == 2
    assert report["parties"]["data_owner"]["tokens"] == expected
    assert expected != converted["prompt-tokens"][:2]  # the noise changed the second token


@pytest.mark.slow
def test_sixteen_tokens_and_a_view_independent_of_the_prompt(
    converted: dict, tmp_path: Path
) -> None:
    views = []
    for prompt in ("prompt", "other"):
        out = tmp_path / prompt
        out.mkdir()
        report, _, _ = generate(converted, prompt, 16, out)
        assert report["tokens"] == converted[f"{prompt}-tokens"]
        assert report["logits_max_abs_error"] < 1e-2
        server = report["parties"]["model_owner"]["generation"]
        views.append(
            [(s["refreshes"], s["rotations"]) for s in [server["prefill"], *server["steps"]]]
        )
    # what the server asks of the client and computes per step depends on the lengths
    # alone (the ciphertexts it receives are CKKS encryptions under the client's key)
    assert views[0] == views[1]


def test_bad_input_stops_before_the_parties_with_one_line(converted: dict, tmp_path: Path) -> None:
    long = tmp_path / "long.npy"
    np.save(long, np.arange(60) % 100)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "decoder.json").write_text('{"format": "secinfer-decoder/1", "layers": -1}')
    prompt = str(converted["prompt"])
    cases = [
        (converted["model"], ["--input", str(long), "--max-new-tokens", "8"], "need 68 positions"),
        (converted["model"], ["--input", prompt, "--stop-token", "100"], "--stop-token 100"),
        (converted["model"], ["--input", prompt, "--max-new-tokens", "0"], "give at least 1"),
        (broken, ["--input", prompt], "layers is -1"),
    ]
    for model, args, message in cases:
        result = CliRunner().invoke(main, ["generate", str(model), "-b", "he", *args])
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "progress" not in result.stderr


def test_he_party_client_checks_its_own_arguments(tmp_path: Path) -> None:
    """The client's own mistakes stop it before it connects: one line, exit 2."""
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([[1.5, 2.0]]))
    base = ["he-party", "--role", "client", "--connect", "127.0.0.1:9", "--generate"]
    base += ["--insecure-channel", "--out", str(tmp_path)]
    cases = [
        ([], "needs one --input IDS.npy"),
        (["--input", str(ids)], "integer token ids"),
        (["--input", str(ids), "--max-new-tokens", "0"], "give at least 1"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, [*base, *args])
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr

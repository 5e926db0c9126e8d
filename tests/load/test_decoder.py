"""Generation with a key/value cache on the local backends: the decoder's prefill and step
programs (`secinfer.load.decoder`) against transformers' own greedy decoding, over the
families and shapes (GPT-2; LLaMA-style with RMSNorm, SwiGLU, rotary positions and
grouped-query attention), and `approx` (each secure backend's plan) against plaintext."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secinfer.errors import UserError
from secinfer.launch.generate import generate_local
from secinfer.load.decoder import load_decoder
from tests.helpers import decoders

PROMPT = torch.tensor([[5, 17, 33, 2, 9, 41]])


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    model = decoders.decoder(request.param, kv_heads=2 if request.param == "llama" else None)
    directory = decoders.save(model, tmp_path_factory.mktemp(request.param))
    return request.param, model, load_decoder(directory)


def test_plain_generation_with_the_cache_equals_transformers_greedy(family: tuple) -> None:
    _, model, decoder = family
    expected = decoders.greedy(model, PROMPT, 16)
    generation = generate_local(decoder, PROMPT, 16, "plain")
    assert generation.tokens == expected
    assert len(set(expected)) > 3  # trained-scale weights: not one token repeated
    assert [s["token"] for s in generation.steps] == expected


@pytest.mark.parametrize("target", ["mpc", pytest.param("he", marks=pytest.mark.slow)])
def test_approx_runs_the_secure_plan_and_keeps_plaintext_greedy(family: tuple, target: str) -> None:
    _, model, decoder = family
    expected = decoders.greedy(model, PROMPT, 16)
    tokens = 16 if target == "mpc" else 6  # he forms are fitted per row length: slower
    expected = expected[:tokens]
    generation = generate_local(decoder, PROMPT, tokens, "approx", target=target)
    assert generation.plan_for == target
    assert generation.tokens == expected
    assert all(s["plain_token"] == s["token"] for s in generation.steps)
    errors = [s["max_abs_error"] for s in generation.steps]
    assert 0 < max(errors) < 0.25  # the logits spread over several units: far from a tie


def test_the_step_runs_one_row_and_the_cache_grows_by_one(family: tuple) -> None:
    """The step program's logits are one row and its caches one row longer than its
    inputs; its linear layers never see the prefix (the cost per token is the one row
    plus attention over the cache)."""
    _, _, decoder = family
    with torch.no_grad():
        logits, *cache = decoder.prefill.module()(PROMPT)
        again, *longer = decoder.step.module()(torch.tensor([[3]]), *cache)
    assert logits.shape == again.shape == (1, decoder.vocab)
    assert len(cache) == 2 * decoder.layers
    for before, after in zip(cache, longer, strict=True):
        assert after.shape[2] == before.shape[2] + 1 == PROMPT.shape[1] + 1
        torch.testing.assert_close(after[:, :, :-1], before)


def test_a_stop_token_ends_the_generation_after_it(family: tuple) -> None:
    _, model, decoder = family
    expected = decoders.greedy(model, PROMPT, 8)
    stop = expected[3]
    generation = generate_local(decoder, PROMPT, 8, "plain", stop_token=stop)
    assert generation.tokens == expected[: expected.index(stop) + 1]
    assert generation.stopped_by == "stop_token"


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    family=st.sampled_from(["gpt2", "llama"]),
    head_dim=st.sampled_from([4, 8]),
    heads=st.sampled_from([1, 2, 4]),
    group=st.sampled_from([1, 2]),
    layers=st.integers(1, 3),
    prompt=st.integers(1, 7),
)
def test_cached_generation_matches_transformers_across_shapes(
    tmp_path: Path, family: str, head_dim: int, heads: int, group: int, layers: int, prompt: int
) -> None:
    """Widths, head counts, grouped-query ratios, depths and prompt lengths (down to one
    token, where the first step's cache has one row) beyond the fixtures' shapes."""
    kv_heads = max(1, heads // group)
    model = decoders.decoder(
        family, hidden=heads * head_dim, heads=heads, kv_heads=kv_heads, layers=layers, seed=prompt
    )
    directory = decoders.save(model, tmp_path / f"{family}-{heads}-{kv_heads}-{layers}-{prompt}")
    ids = (torch.arange(prompt) * 13 + 7)[None] % 100
    assert generate_local(load_decoder(directory), ids, 4, "plain").tokens == decoders.greedy(
        model, ids, 4
    )


def test_a_model_without_a_language_model_head_is_refused(tmp_path: Path) -> None:
    import transformers as T

    config = T.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50)
    T.GPT2Model(config).save_pretrained(tmp_path / "base")
    with pytest.raises(UserError, match="GPT2Model has no causal language-model head"):
        load_decoder(tmp_path / "base")


def test_lengths_beyond_the_positions_are_refused(family: tuple) -> None:
    _, _, decoder = family
    with pytest.raises(UserError, match=r"need 65 positions; .* has 64"):
        decoder.check_length(60, 5)
    decoder.check_length(59, 5)


def test_a_saved_decoder_loads_back_and_generates_the_same(family: tuple, tmp_path: Path) -> None:
    """`save_decoder` writes the two programs and decoder.json; `load_decoder` reads them
    back without running code from the files (`safe_archive.load_untrusted`)."""
    from secinfer.load.decoder import save_decoder

    _, model, decoder = family
    save_decoder(decoder, tmp_path / "saved")
    loaded = load_decoder(tmp_path / "saved")
    assert (loaded.layers, loaded.vocab, loaded.max_positions) == (
        decoder.layers, decoder.vocab, decoder.max_positions,
    )  # fmt: skip
    assert generate_local(loaded, PROMPT, 6, "plain").tokens == decoders.greedy(model, PROMPT, 6)


def test_a_damaged_saved_decoder_is_refused_with_one_line(family: tuple, tmp_path: Path) -> None:
    import json
    import shutil

    from secinfer.load.decoder import save_decoder

    _, _, decoder = family
    good = tmp_path / "good"
    save_decoder(decoder, good)
    description = json.loads((good / "decoder.json").read_text())

    def variant(name: str, change: dict | None = None, remove: str | None = None) -> Path:
        path = tmp_path / name
        shutil.copytree(good, path)
        if change is not None:
            (path / "decoder.json").write_text(json.dumps({**description, **change}))
        if remove is not None:
            (path / remove).unlink()
        return path

    cases = [
        (variant("format", {"format": "other"}), "not a secinfer-decoder/1"),
        (variant("layers", {"layers": "two"}), "layers is 'two'"),
        (variant("more", {"layers": decoder.layers + 1}), "takes"),
        (variant("missing", remove="step.pt2"), "step.pt2 is missing"),
    ]
    broken = variant("json")
    (broken / "decoder.json").write_text("{")
    cases.append((broken, "not readable JSON"))
    for path, message in cases:
        with pytest.raises(UserError, match=message) as caught:
            load_decoder(path)
        assert "\n" not in str(caught.value)


def test_sampled_generation_with_the_cache_equals_sampling_without_it(family: tuple) -> None:
    """Sampling (temperature and top-k, `core.sampling`) through the cached programs picks
    what the same rule picks on transformers' logits of the whole prefix, step by step."""
    from secinfer.core.sampling import Sampling

    _, model, decoder = family
    rule = Sampling(1.0, 5, seed=2)
    ids = PROMPT.clone()
    expected = []
    with torch.no_grad():
        for step in range(8):
            token = rule.pick(model(ids).logits[0, -1], step)
            expected.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
    generation = generate_local(decoder, PROMPT, 8, "plain", sampling=rule)
    assert generation.tokens == expected
    assert expected != decoders.greedy(model, PROMPT, 8)  # the noise changed the text

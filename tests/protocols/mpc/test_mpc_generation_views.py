"""What each party receives while generating (`secinfer.backends.mpc.generation`) reveals
nothing: the views test (`test_mpc_privacy`) extended to the decoding loop.

The parties run the product's own loop (`_offline`, then `_generate`: the prefill, the
one-hot argmax on shares, the token's index opened to the data owner, the step on the
unopened one-hot and the shared caches) on a tiny GPT-2, with every tensor received from
the other computing party recorded (`Meter(keep_views=True)`). Two prompts with the same
weights give the model owner views of the same shapes (the lengths are public) that look
uniformly random and hold no fixed-point encoding of a prompt id or a generated token;
two weight sets with the same prompt do the same for the data owner's views, but for the
model owner's shares of the token indices it opens (uniform words too). The data owner's
"next" messages (plain JSON, one bit: go on or stop) are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import decoders
from helpers.privacy import assert_uniform, encodings, key_words, words

from protocols.mpc.local import run_local
from protocols.mpc.runtime import Role

TOKENS = 3
PROMPTS = {1: [5, 17, 33, 2], 2: [40, 8, 21, 60]}


def generate(
    role: Role, directory: str, prompt: list[int], temperature: float = 0.0
) -> list[int] | None:
    """Both computing parties: plan the decoder's programs (identically on both sides,
    from the same directory and lengths), share the weights (the data owner's are zeros),
    generate TOKENS tokens, sampled at `temperature` (the data owner's choice alone: it
    shares its noise, zeros when greedy). The data owner returns them."""
    from protocols.mpc.meter import Meter
    from secinfer.backends.mpc.generation import PROGRAMS, _generate, _offline
    from secinfer.core.graph import build_graph
    from secinfer.core.prepare import prepare_graph
    from secinfer.core.sampling import Sampling
    from secinfer.load.decoder import load_decoder

    decoder = load_decoder(Path(directory))
    graphs = {name: build_graph(getattr(decoder, name)) for name in PROGRAMS}
    samples = dict(zip(PROGRAMS, decoder.calibration_samples(len(prompt), TOKENS), strict=True))
    plans = {name: prepare_graph(graphs[name], "mpc", samples[name])[1] for name in PROGRAMS}
    meter = Meter().install()
    session = _offline(graphs, plans, len(prompt), TOKENS, role, meter)
    sampling = Sampling(temperature, None, seed=6)
    mine = (torch.tensor([prompt]), None, sampling, None) if role is Role.DATA_OWNER else None
    record = _generate(session, role, meter, mine)
    meter.remove()
    return record["tokens"] if role is Role.DATA_OWNER else None


def protocol_views(views: list[np.ndarray]) -> list[np.ndarray]:
    """The views without the data owner's plain messages (a length word, then bytes)."""
    kept: list[np.ndarray] = []
    for view in views:
        value = np.asarray(view)
        previous = np.asarray(kept[-1]) if kept else None
        announced = (
            previous is not None and previous.size == 1 and int(previous.item()) == value.size
        )
        if value.dtype == np.uint8 and announced:
            kept.pop()  # its length, broadcast just before it
            continue
        kept.append(view)  # packed FSS select bits are uint8 too, not announced
    return kept


pytestmark = pytest.mark.slow  # four sessions of three processes: about three minutes


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("views")
    paths = {}
    for seed in (1, 2):
        model = decoders.decoder("gpt2", hidden=16, heads=2, layers=1, vocab=64, seed=seed)
        paths[seed] = str(decoders.save(model, root / f"w{seed}"))
    out = {}
    for prompt, weights, temperature in [(1, 1, 0.0), (2, 1, 0.0), (1, 2, 0.0), (2, 1, 2.0)]:
        results = run_local(generate, paths[weights], PROMPTS[prompt], temperature, keep_views=True)
        key = (prompt, weights) if not temperature else "sampled"
        out[key] = {
            "views": {
                r: protocol_views(results[r].views) for r in (Role.MODEL_OWNER, Role.DATA_OWNER)
            },
            "tokens": results[Role.DATA_OWNER].value,
        }
    return out


def test_the_model_owners_view_depends_on_neither_the_prompt_nor_the_tokens(runs) -> None:
    a, b = (runs[(p, 1)]["views"][Role.MODEL_OWNER] for p in (1, 2))
    assert [v.shape for v in a] == [v.shape for v in b]
    assert runs[(1, 1)]["tokens"] != runs[(2, 1)]["tokens"]  # the runs did differ
    for prompt, views in ((1, a), (2, b)):
        assert_uniform(views)
        ids = torch.tensor(PROMPTS[prompt] + runs[(prompt, 1)]["tokens"], dtype=torch.float64)
        assert not (set(words(views).tolist()) & encodings(ids))


def test_the_data_owners_view_does_not_depend_on_the_weights(runs) -> None:
    """The same shapes but for the forwarded FSS key messages, whose lengths follow the
    key widths that the plan's calibrated intervals set (the plan is public)."""
    a, b = (runs[(1, w)]["views"][Role.DATA_OWNER] for w in (1, 2))
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if key_words(x) is None or key_words(y) is None:
            assert x.shape == y.shape
    for views in (a, b):
        assert_uniform(views)  # the opened indices arrive as the model owner's shares


def test_the_loop_generated_what_plaintext_greedy_does(runs, tmp_path: Path) -> None:
    model = decoders.decoder("gpt2", hidden=16, heads=2, layers=1, vocab=64, seed=1)
    for prompt in (1, 2):
        expected = decoders.greedy(model, torch.tensor([PROMPTS[prompt]]), TOKENS)
        assert runs[(prompt, 1)]["tokens"] == expected


def test_sampling_leaves_the_model_owners_view_as_greedy_leaves_it(runs) -> None:
    """The data owner's Gumbel noise is shared from its side, as greedy's zeros are: the
    model owner's view has the same shapes, stays uniform and encodes no token, while
    the sampled tokens differ from greedy's."""
    greedy, sampled = runs[(2, 1)], runs["sampled"]
    assert sampled["tokens"] != greedy["tokens"]
    views = sampled["views"][Role.MODEL_OWNER]
    assert [v.shape for v in views] == [v.shape for v in greedy["views"][Role.MODEL_OWNER]]
    assert_uniform(views)
    ids = torch.tensor(PROMPTS[2] + sampled["tokens"], dtype=torch.float64)
    assert not (set(words(views).tolist()) & encodings(ids))

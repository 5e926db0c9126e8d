"""FSS comparisons and ReLU (`protocols.mpc.fss_compare`) on the three real CrypTen parties
(model owner, data owner, dealer processes over sockets), against plaintext and against
CrypTen's own comparison in the same run.

Inputs: 4096 values on [-12, 12] plus outliers to +-1000 (a GELU input of a trained model
goes beyond +-10), on the 2^-16 grid; widths from the range: |X| <= 1000 2^16 < 2^26, so
bits = 28 bounds every difference to the thresholds used. Checked:
- [x < t] for t in {-1000.5, -0.25, 0, 3, 999} exactly equal to plaintext (a comparison of
  grid values is exact), and ReLU exactly max(x, 0);
- online bytes per element and party: 8 for the comparisons (all thresholds, one round),
  8 + 1/8 for ReLU (two rounds), against CrypTen's `ge` in the same run (over 100);
- the keys' traffic counted apart from the online figures: the model owner's from the
  dealer (its payload) and the common part it forwards (offline), the data owner's
  offline receipt of the same;
- the data owner's view: what it received online is x + r (uniform) and one packed bit
  vector; nothing else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from protocols.mpc.local import run_local
from protocols.mpc.runtime import Role

SCALE = 2.0**16
BITS = 28
THRESHOLDS = (-1000.5, -0.25, 0.0, 3.0, 999.0)


GELU_BOUND, GELU_SIZE = 34.0, 4096
GELU_BITS = 23  # |X| <= 34 2^16 < 2^22, and |X| + 4 2^16 too (the tail form's clip)


def gelu_inputs() -> np.ndarray:
    """GELU inputs of a trained model: most within +-4, outliers to the bound 34."""
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.normal(0, 1.5, GELU_SIZE - 96), rng.uniform(-34, 34, 96)])
    return np.round(np.clip(x, -34, 34) * SCALE) / SCALE


SCORES = (2, 32, 128)
SOFTMAX_BITS = 32  # differences to the mask floor 1e4: 1e4 2^16 < 2^30, with room


def score_inputs() -> np.ndarray:
    """Attention scores of a trained model: N(0, 4) rows with outliers to +-40."""
    rng = np.random.default_rng(9)
    x = rng.normal(0, 2, SCORES)
    x[:, :, :3] = rng.uniform(-40, 40, (*SCORES[:2], 3))
    return np.round(x * SCALE) / SCALE


def causal_mask() -> torch.Tensor:
    """Row i keeps keys <= 96 + i (a causal mask over the last 32 of 128 keys)."""
    keys = torch.arange(SCORES[2])[None, :]
    rows = torch.arange(SCORES[1])[:, None]
    return torch.where(keys <= 96 + rows, 0.0, torch.finfo(torch.float32).min)


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-12, 12, 4000), rng.uniform(-1000, 1000, 90),
                        [0.0, -1000.0, 1000.0, 3.0, -0.25, 999.0]])  # fmt: skip
    return np.round(x * SCALE) / SCALE


def program(role: Role, x: np.ndarray) -> dict[str, Any]:
    from protocols.mpc import fss_compare as party
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.meter import Meter
    from protocols.mpc.reveal import reveal_to

    crypten = import_crypten()
    mine = role is Role.DATA_OWNER
    value = torch.as_tensor(x)
    owner = int(Role.DATA_OWNER)
    secret = crypten.cryptensor(value if mine else torch.zeros_like(value), src=owner)
    out: dict[str, Any] = {}
    from approximations.sign_exp_gelu import SignExpGELU
    from approximations.tail_gelu import TailGELU
    from protocols.mpc import gelu, softmax

    rows = score_inputs()
    scores = crypten.cryptensor(torch.as_tensor(rows if mine else np.zeros(rows.shape)), src=owner)
    causal = causal_mask()

    form = SignExpGELU.for_bound(GELU_BOUND)
    wide = crypten.cryptensor(torch.as_tensor(gelu_inputs() if mine else np.zeros(GELU_SIZE)),
                              src=owner)  # fmt: skip
    for name, fn in (
        ("less_than", lambda: crypten.stack(party.less_than(secret, THRESHOLDS, BITS))),
        ("relu", lambda: party.relu(secret, BITS)),
        ("crypten_ge", lambda: secret.ge(0)),
        ("gelu_fss", lambda: gelu.sign_exp_gelu(wide, form, fss_bits=GELU_BITS)),
        ("gelu", lambda: gelu.sign_exp_gelu(wide, form)),
        ("tail_fss", lambda: gelu.tail_gelu(wide, TailGELU.default(), fss_bits=GELU_BITS)),
        ("tail", lambda: gelu.tail_gelu(wide, TailGELU.default())),
        ("softmax_fss", lambda: softmax.softmax(scores, mask=causal, fss_bits=SOFTMAX_BITS)),
        ("softmax", lambda: softmax.softmax(scores, mask=causal)),
    ):
        meter = Meter(keep_views=True).install()
        result = fn()
        meter.remove()
        plain = reveal_to(result, int(Role.DATA_OWNER))
        views = [v.numpy().copy() for v in meter.views]
        out[name] = (plain.numpy() if mine else None, meter.traffic.to_dict(), views)
    return out


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    x = _inputs()
    parties = run_local(program, x, timeout=600.0)
    return {"x": x, "mo": parties[Role.MODEL_OWNER].value, "do": parties[Role.DATA_OWNER].value}


def test_comparisons_are_exact_from_one_opening(run) -> None:
    x, (values, traffic, _) = run["x"], run["do"]["less_than"]
    want = np.stack([(x < t).astype(np.float64) for t in THRESHOLDS])
    np.testing.assert_array_equal(values, want)
    assert traffic["bytes_sent"] == 8 * x.size and traffic["rounds"] == 1


def test_relu_is_exact_in_two_rounds(run) -> None:
    x, (values, traffic, _) = run["x"], run["do"]["relu"]
    np.testing.assert_array_equal(values, np.maximum(x, 0.0))
    assert traffic["bytes_sent"] == 8 * x.size + (x.size + 7) // 8
    assert traffic["rounds"] == 2


def test_fss_sends_a_fraction_of_crypten_s_comparison(run) -> None:
    ours = run["do"]["relu"][1]["bytes_sent"]
    crypten = run["do"]["crypten_ge"][1]["bytes_sent"]
    assert crypten > 100 * run["x"].size  # CrypTen's 64-bit circuit
    assert ours < crypten / 10


def test_keys_are_offline_traffic(run) -> None:
    from protocols.mpc.fss import dealing

    n = run["x"].size
    mo, do = run["mo"]["relu"][1], run["do"]["relu"][1]
    common = 8 * dealing.frame_words(n, BITS)  # the forwarded words, framed
    assert mo["dealer_bytes_received"] >= 8 * dealing.payload_words(n, BITS, 1)
    assert mo["offline_bytes_sent"] == common and do["offline_bytes_received"] == common
    assert do["dealer_bytes_received"] == 0 and mo["bytes_sent"] == do["bytes_sent"]


def test_the_data_owner_sees_masked_values_only(run) -> None:
    """The data owner's whole view of a ReLU: the forwarded correction words (offline,
    framed by their request's header and an end mark),
    the model owner's contribution to x + r (64-bit words) and its packed bit of b xor
    r_b; the words' top bits are fair coins, and the opened bits agree with [x >= 0] half
    the time (they are masked by r_b), so neither tells the sign of x."""
    from protocols.mpc.fss import dealing

    _, _, views = run["do"]["relu"]
    x, n = run["x"], run["x"].size
    expected = [dealing.frame_words(n, BITS), n, (n + 7) // 8]
    assert sorted(v.size for v in views) == sorted(expected)
    sigma = 0.5 / np.sqrt(n)
    words = next(v for v in views if v.size == n)
    assert abs((words.view(np.uint64) >> np.uint64(63)).mean() - 0.5) < 5 * sigma
    packed = next(v for v in views if v.size == (n + 7) // 8)
    bits = np.unpackbits(packed.view(np.uint8))[:n]
    assert abs(np.mean(bits == (x >= 0)) - 0.5) < 5 * sigma


def test_sign_exp_gelu_with_fss_relu(run) -> None:
    """sign_exp GELU (`protocols.mpc.gelu`) with its relu from FSS keys against the same
    kernel with CrypTen's comparison, in one run: no worse against exact GELU (the form's
    certificate 7.8e-4 on |x| <= 34, plus fixed point: 9 squarings amplify the exponential's
    rounding by 2^9, about 2^-7 relative; measured 5.0e-3 to 5.5e-3 and 5.8e-3 to 6.1e-3
    over runs), under half the bytes and in fewer rounds."""
    x = torch.from_numpy(gelu_inputs())
    want = torch.nn.functional.gelu(x).numpy()
    fss, today = run["do"]["gelu_fss"], run["do"]["gelu"]
    errors = [float(np.abs(values - want).max()) for values, _, _ in (fss, today)]
    assert errors[0] < 1e-2 and errors[0] <= 1.25 * errors[1], errors  # as for softmax
    assert fss[1]["bytes_sent"] < 0.5 * today[1]["bytes_sent"]
    assert fss[1]["rounds"] < today[1]["rounds"]


def test_softmax_with_fss_comparisons(run) -> None:
    """Softmax 2x32x128 (causal, scores to +-40): the row maximum's tournament and the
    exp cutoff from FSS keys, against the same kernel with CrypTen's comparisons in one
    run: no worse against exact softmax, at most a third of the bytes (the issue's target
    for 12x128x128), fewer rounds."""
    x = torch.from_numpy(score_inputs()) + causal_mask().double()
    want = torch.softmax(x, -1).numpy()
    fss, today = run["do"]["softmax_fss"], run["do"]["softmax"]
    errors = [float(np.abs(values - want).max()) for values, _, _ in (fss, today)]
    # the same kernel but for its (exact) comparisons: the errors differ by the runs'
    # random truncations only (measured 7.1e-3 and 6.9e-3)
    assert errors[0] < 1.5e-2 and errors[0] <= 1.25 * errors[1], errors
    assert fss[1]["bytes_sent"] <= today[1]["bytes_sent"] / 3
    assert fss[1]["rounds"] < today[1]["rounds"]


def test_tail_gelu_with_fss_at_a_fifth_of_the_bytes(run) -> None:
    """The tail form relu(x) - p(min(|x|, 4)) (`approximations.tail_gelu`, certified 2.4e-4
    on every input) with its three comparisons and selects from one FSS opening: error
    within 1e-3 of exact GELU on inputs to +-34, at most a fifth of the bytes of the
    sign_exp kernel with CrypTen's comparison in the same run (the issue's GELU target),
    exactly 8 + 3/8 bytes for the comparisons and 4 openings of 8 bytes for T_1..T_4, and
    the same values through CrypTen's comparisons."""
    x = torch.from_numpy(gelu_inputs())
    want = torch.nn.functional.gelu(x).numpy()
    fss, crypten, today = (run["do"][k] for k in ("tail_fss", "tail", "gelu"))
    assert float(np.abs(fss[0] - want).max()) < 1e-3
    assert float(np.abs(crypten[0] - want).max()) < 1e-3
    n = x.numel()
    assert fss[1]["bytes_sent"] == 8 * n + (3 * n + 7) // 8 + 4 * 8 * n
    assert fss[1]["bytes_sent"] <= today[1]["bytes_sent"] / 5
    assert fss[1]["rounds"] == 5


def test_each_party_s_view_of_the_tail_gelu_is_masked(run) -> None:
    """Both parties' whole views of the tail GELU (FSS comparisons, selects, then the
    polynomial's Beaver openings): every opened word vector has fair top bits (x + r and
    the products' x - a are uniform), the three opened select bits agree with their
    predicates ([x >= 0], [0 <= x < 4], [-4 <= x < 0]) half the time (each masked by its
    own r_b), and the data owner's forwarded keys are the public header, correction
    words with fair top bits, and the end mark: nothing depends on the other's secret."""
    from protocols.mpc.fss import dealing

    x = gelu_inputs()
    n = x.size
    predicates = [x >= 0, (x >= 0) & (x < 4), (x >= -4) & (x < 0)]
    sigma = 0.5 / np.sqrt(n)
    for party in ("mo", "do"):
        views = run[party]["tail_fss"][2]
        frames = [v for v in views if v.size == dealing.frame_words(n, GELU_BITS)]
        assert len(frames) == (1 if party == "do" else 0)
        packed = [v for v in views if v.dtype == np.uint8]
        assert [v.size for v in packed] == [(3 * n + 7) // 8]
        bits = np.unpackbits(packed[0])[: 3 * n].reshape(3, n)
        for row, predicate in zip(bits, predicates, strict=True):
            assert abs(np.mean(row == predicate) - 0.5) < 5 * sigma
        words = [v.view(np.uint64).reshape(-1) for v in views if v.dtype != np.uint8]
        openings = [w for w in words if w.size != dealing.frame_words(n, GELU_BITS)]
        assert openings and all(w.size % n == 0 for w in openings)
        for w in openings:
            assert abs((w >> np.uint64(63)).mean() - 0.5) < 5 * 0.5 / np.sqrt(w.size)
        for frame in frames:
            frame = frame.view(np.uint64)
            head = dealing.HEADER_WORDS
            assert frame[:head].tolist() == [n, GELU_BITS, 3, dealing.forwarded_words(n, GELU_BITS)]
            assert frame[-1] == dealing.STREAM_END
            body = frame[head + 1 : -1]  # after party 1's check word
            assert abs((body >> np.uint64(63)).mean() - 0.5) < 5 * 0.5 / np.sqrt(body.size)

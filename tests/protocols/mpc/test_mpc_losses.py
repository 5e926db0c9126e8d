"""Secure per-example losses (protocols.mpc.losses) against the plaintext references.

One run of the three real CrypTen parties: the data owner shares logits shaped like a
trained 10-class classifier's (about +-15, a margin on the label for most rows, a few
misclassified rows and a tie) and the one-hot labels; every loss is revealed per example to
the data owner for this test (a real evaluation reveals only the sums). Tolerances: per
example within 3e-3 absolute + 1e-3 relative for ce, square, zloss, gce, mae (fixed point
2^-16, the log and softplus polynomials, exp by squaring); the sum over 64 examples within
1e-3 relative; hits exactly equal to argmax == label (ties count as hits, like torch's
first-maximum argmax when the label is the first maximum).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.privacy import assert_uniform, encodings, words

from approximations import losses as L
from protocols.mpc.local import run_local
from protocols.mpc.runtime import Role

NAMES = ["ce", "square", "zloss", "gce", "mae"]
A, B, Q = 0.5, 2.0, 0.7


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 10, 64)
    logits = rng.normal(size=(64, 10)) * 4.0
    logits[np.arange(64), labels] += rng.uniform(0.0, 12.0, 64)
    logits[0, :] = 0.0
    logits[0, labels[0]] = 3.0  # a clear hit
    other = (labels[1] + 1) % 10
    logits[1, labels[1]] = logits[1, other] = logits[1].max() + 1.0  # a tie for the maximum
    logits = np.clip(logits, -15.0, 15.0)
    return np.round(logits * 2**16) / 2**16, labels


def parties(role: Role, logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray] | None:
    from protocols.mpc import losses
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.reveal import reveal_to

    crypten = import_crypten()
    mine = role is Role.DATA_OWNER
    onehot = torch.nn.functional.one_hot(torch.as_tensor(labels), 10).double()
    x = torch.as_tensor(logits)
    shared = crypten.cryptensor(x if mine else torch.zeros_like(x), src=int(Role.DATA_OWNER))
    target = crypten.cryptensor(
        onehot if mine else torch.zeros_like(onehot), src=int(Role.DATA_OWNER)
    )
    values = losses.per_example(shared, target, NAMES, a=A, b=B, q=Q)
    out = {name: reveal_to(v, int(Role.DATA_OWNER)) for name, v in values.items()}
    return {k: v.numpy() for k, v in out.items()} if mine else None


@pytest.fixture(scope="module")
def revealed() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    logits, labels = make_data()
    result = run_local(parties, logits, labels, timeout=600.0)
    return result[Role.DATA_OWNER].value, logits, labels


def _reference(name: str, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    options = L.LossOptions(zloss_a=A, zloss_b=B, gce_q=Q)
    fn = L.reference(name, options)
    x, y = torch.as_tensor(logits), torch.as_tensor(labels)
    return np.array([float(fn(x[i : i + 1], y[i : i + 1])) for i in range(len(y))])


@pytest.mark.parametrize("name", NAMES)
def test_each_loss_per_example_and_summed(revealed, name: str) -> None:
    values, logits, labels = revealed
    want = _reference(name, logits, labels)
    got = values[name]
    assert np.all(np.abs(got - want) <= 3e-3 + 1e-3 * np.abs(want)), np.abs(got - want).max()
    assert abs(got.sum() - want.sum()) <= 1e-3 * abs(want.sum())


def test_hits_are_exactly_argmax_equals_label(revealed) -> None:
    values, logits, labels = revealed
    is_max = logits[np.arange(64), labels] >= logits.max(-1)
    assert np.array_equal(np.round(values["hit"]).astype(bool), is_max)
    assert is_max[1] and not np.all(logits.argmax(-1) == labels)  # the tie and a miss are in


def aggregate_to_model_owner(role: Role, seed: int) -> list[float] | None:
    """The real evaluation's pattern: per-example losses summed on shares, the totals (and
    only them) opened to the model owner."""
    from protocols.mpc import losses
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.reveal import reveal_to

    crypten = import_crypten()
    rng = np.random.default_rng(seed)
    logits = torch.as_tensor(rng.normal(size=(32, 10)) * 4.0)
    labels = torch.as_tensor(rng.integers(0, 10, 32))
    onehot = torch.nn.functional.one_hot(labels, 10).double()
    mine = role is Role.DATA_OWNER
    shared = crypten.cryptensor(logits if mine else torch.zeros_like(logits), src=1)
    target = crypten.cryptensor(onehot if mine else torch.zeros_like(onehot), src=1)
    values = losses.per_example(shared, target, NAMES, a=A, b=B, q=Q)
    totals = crypten.stack([values[n].sum() for n in [*NAMES, "hit"]])
    opened = reveal_to(totals, int(Role.MODEL_OWNER))
    return None if opened is None else opened.tolist()


def test_the_model_owner_learns_the_aggregate_and_no_per_example_value() -> None:
    runs = {s: run_local(aggregate_to_model_owner, s, keep_views=True) for s in (1, 2)}
    views = {s: r[Role.MODEL_OWNER].views for s, r in runs.items()}
    assert [v.shape for v in views[1]] == [v.shape for v in views[2]]
    for s in (1, 2):
        *protocol, opened = views[s]
        assert np.asarray(opened).size == len(NAMES) + 1  # the totals, nothing per example
        assert_uniform(protocol)
        rng = np.random.default_rng(s)
        logits = torch.as_tensor(rng.normal(size=(32, 10)) * 4.0)
        labels = torch.as_tensor(rng.integers(0, 10, 32))
        per_example = [
            torch.as_tensor(_reference(n, logits.numpy(), labels.numpy())) for n in NAMES
        ]
        assert not (set(words(protocol).tolist()) & encodings(logits, *per_example))
    totals = runs[1][Role.MODEL_OWNER].value
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(32, 10)) * 4.0, rng.integers(0, 10, 32)
    want = [_reference(n, logits, labels).sum() for n in NAMES]
    assert np.allclose(totals[: len(NAMES)], want, rtol=1e-3, atol=1e-2)
    hits = int((logits.argmax(-1) == labels).sum())
    assert round(totals[-1]) == hits and abs(totals[-1] - hits) < 1e-2  # same scale as losses


@pytest.mark.slow
def test_the_loss_cost_bench_runs_and_its_sums_are_right() -> None:
    """`make bench`'s private-evaluation table, at 100 rows (figures scaled to 1,000)."""
    from benchmarks import loss_costs

    record = loss_costs.run(quick=True)
    rows = {r["loss"]: r for r in record["losses"]}
    assert set(rows) == {*NAMES, "accuracy"}
    for r in rows.values():
        assert r["relative_error_of_sum"] < 1e-3 and r["rounds"] > 0
    assert rows["square"]["rounds"] < rows["ce"]["rounds"]  # products only vs max + exp + log
    assert "| zloss |" in loss_costs.markdown(record)

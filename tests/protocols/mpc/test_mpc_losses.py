"""What only MPC has in secure loss evaluation: the aggregate opened to the model owner.

The per-example losses against the plaintext references, on mpc and he alike, are in
`tests/protocols/test_losses_secure.py`. Here: the real evaluation's pattern (per-example
losses summed on shares, only the totals opened, to the model owner) run twice on
different data by the three real CrypTen parties: what the model owner receives looks
uniformly random, contains no fixed-point encoding of a logit or a per-example loss, and
has the same shapes for both data sets; the totals within 1e-3 relative + 1e-2 absolute
of the plaintext sums, the hit count within 1e-2 of the argmax hits. Slow suite: the loss
cost bench.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.losses import MPC_OPTIONS, NAMES, reference_per_example
from helpers.privacy import assert_uniform, encodings, words

from protocols.mpc.local import run_local
from protocols.mpc.runtime import Role

A, B, Q, TAU = (
    MPC_OPTIONS.zloss_a,
    MPC_OPTIONS.zloss_b,
    MPC_OPTIONS.gce_q,
    MPC_OPTIONS.compsum_tau,
)


def _reference(name: str, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return reference_per_example(
        name, torch.as_tensor(logits), torch.as_tensor(labels), MPC_OPTIONS
    )


def aggregate_to_model_owner(role: Role, seed: int, fss: bool) -> list[float] | None:
    """The real evaluation's pattern: per-example losses summed on shares, the totals (and
    only them) opened to the model owner; the comparisons from FSS keys over the whole
    ring (what `secinfer eval -b mpc` uses by default) or CrypTen's."""
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
    kernels = losses.MpcLossKernels(fss_bits=64 if fss else None)
    values = losses.per_example(
        shared, target, list(NAMES), a=A, b=B, q=Q, tau=TAU, kernels=kernels
    )
    totals = crypten.stack([values[n].sum() for n in [*NAMES, "hit"]])
    opened = reveal_to(totals, int(Role.MODEL_OWNER))
    return None if opened is None else opened.tolist()


@pytest.mark.parametrize("fss", [False, True], ids=["crypten", "fss"])
def test_the_model_owner_learns_the_aggregate_and_no_per_example_value(fss: bool) -> None:
    runs = {s: run_local(aggregate_to_model_owner, s, fss, keep_views=True) for s in (1, 2)}
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
    assert set(rows) == {*NAMES, "accuracy", *loss_costs.VARIANTS}
    for r in rows.values():
        assert r["relative_error_of_sum"] < 1e-3 and r["rounds"] > 0
    assert rows["square"]["rounds"] < rows["ce"]["rounds"]  # products only vs max + exp + log
    assert "| zloss |" in loss_costs.markdown(record)

"""Smoke test of the HE matmul bench (`benchmarks.he_matmul`) in quick mode: real
TenSEAL at N = 8192, the three strategies side by side on tiny shapes, no mocks. And the HE
private-evaluation bench (`benchmarks.he_loss_costs`) in quick mode, every loss on
100 encrypted rows with real refreshes (about 45 s on two cores: slow suite)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tenseal")

from benchmarks import he_loss_costs as loss_bench
from benchmarks import he_matmul as bench

ROW_KEYS = {
    "shape", "strategy", "skipped", "seconds", "predicted_seconds", "rotations",
    "key_switches", "ct_pt_mults", "additions", "depth", "counts_match_model",
    "ciphertexts_in", "ciphertexts_out", "bytes_in", "bytes_out", "max_abs_error",
    "client_seconds", "details", "time_ratio_vs_builtin",
}  # fmt: skip


@pytest.fixture(scope="module")
def record() -> dict:
    return bench.run(quick=True)


def test_every_shape_has_the_three_strategies_and_iron(record: dict) -> None:
    rows = record["rows"]
    assert record["quick"] is True
    assert (*bench.STRATEGIES, "iron") == bench.ROW_STRATEGIES
    assert len(rows) == len(bench.ROW_STRATEGIES) * len(bench.QUICK_SHAPES)
    for shape in bench.QUICK_SHAPES:
        same = [r for r in rows if tuple(r["shape"]) == shape]
        assert [r["strategy"] for r in same] == list(bench.ROW_STRATEGIES)


def test_rows_are_measured_and_accurate(record: dict) -> None:
    for r in record["rows"]:
        assert set(r) == ROW_KEYS and r["skipped"] is None
        assert r["seconds"] > 0 and r["predicted_seconds"] > 0
        assert r["max_abs_error"] < 1e-3
        assert r["counts_match_model"] and r["depth"] == 1
        assert r["ciphertexts_in"] >= 1 and r["ciphertexts_out"] >= 1
        assert r["bytes_in"] > 100_000 * r["ciphertexts_in"]  # ~330 KB per fresh ciphertext
        if r["strategy"] == "iron":  # seeded inputs (one polynomial), outputs of two
            assert r["rotations"] == r["key_switches"] == 0
            per_in, per_out = r["details"]["iron_bytes_per_ciphertext"]
            assert 1.9 < per_out / per_in < 2.1
            assert r["max_abs_error"] <= r["details"]["error_bound"]
            continue
        assert 0 < r["bytes_out"] < r["bytes_in"] * r["ciphertexts_out"]
        assert r["time_ratio_vs_builtin"] > 0
        if r["strategy"] == "builtin_rows":
            assert r["time_ratio_vs_builtin"] == 1.0
        if r["strategy"] == "feature_major":
            assert r["rotations"] == r["key_switches"] == 0
        if r["strategy"] == "diagonal_bsgs":  # one key switch per rotation, steps 1 and n1
            assert r["rotations"] == r["key_switches"] > 0


def test_the_step_limited_context_is_much_smaller(record: dict) -> None:
    section = record["contexts"]
    assert section["all_galois_keys_count"] == 24
    (limited,) = section["bsgs_steps_only"]
    assert limited["steps"] == [1, 4]  # d_in = 16: n1 = 4, n2 = 4
    assert section["no_galois_keys"] < limited["bytes"] < section["all_galois_keys"] / 8
    assert limited["all_over_chosen"] > 8


def test_a_strategy_that_does_not_fit_is_skipped_with_the_reason() -> None:
    contexts = bench.make_contexts()
    x, w, y = bench.shape_data(1, 16, bench.PARAMS.slots)
    row = bench.measure("diagonal_bsgs", contexts, x, w, y)
    assert row["skipped"].startswith("does not fit") and "slots" in row["skipped"]
    line = bench._table_row({**row, "time_ratio_vs_builtin": None})
    assert "skipped: does not fit" in line and line.count("|") == 12


def test_write_gives_json_and_a_markdown_table(record: dict, tmp_path: Path) -> None:
    table = bench.write(record, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["he.quick.json", "he.quick.md"]
    assert json.loads((tmp_path / "he.quick.json").read_text())["rows"] == record["rows"]
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + len(record["rows"])
    assert len({ln.count("|") for ln in lines}) == 1  # every row has every column
    assert "MB with only the steps [1, 4]" in table and "noise" in table
    assert "Iron moves" in table and "m=4096:" in table


def test_the_data_follow_the_stated_distributions() -> None:
    x, w, y = bench.shape_data(64, 384, 384)
    assert x.min() >= -1 and x.max() <= 1
    assert abs(w.std() * np.sqrt(384) - 1) < 0.02
    np.testing.assert_allclose(y, x @ w)
    again = bench.shape_data(64, 384, 384)
    assert all(np.array_equal(a, b) for a, b in zip((x, w, y), again, strict=True))


# --- the private-evaluation bench -------------------------------------------------------------
@pytest.fixture(scope="module")
def loss_record() -> dict:
    return loss_bench.run(quick=True)


@pytest.mark.slow
def test_the_loss_bench_measures_every_loss_at_its_depth(loss_record: dict) -> None:
    import torch

    from benchmarks.loss_costs import NAMES, OPTIONS, make_data
    from protocols.he.losses import HeLossPlan

    assert loss_record["quick"] is True and loss_record["rows"] == loss_bench.QUICK_ROWS
    rows = {r["loss"]: r for r in loss_record["losses"]}
    assert list(rows) == [*NAMES, "accuracy"]
    logits, labels = make_data(loss_bench.QUICK_ROWS)
    plan = HeLossPlan.calibrated(
        torch.as_tensor(logits), zloss_a=OPTIONS.zloss_a, zloss_b=OPTIONS.zloss_b,
        gce_q=OPTIONS.gce_q,
    )  # fmt: skip
    for name, r in rows.items():
        assert r["depth"] == plan.depth(name), name
        assert r["ciphertexts_per_input"] == 10  # one per class, all rows in its slots
        assert r["counts"]["rotations"] == 7  # the sum over 100 rows padded to 128
        assert r["seconds"] > 0 and r["time_ratio_vs_plain"] > 1
        # a refresh regains 2 levels; every one of them sends ciphertexts both ways
        assert r["refreshes"] >= (r["depth"] - 2) // 2
        assert (r["bytes_to_client"] > 0) == (r["bytes_to_server"] > 0) == (r["refreshes"] > 0)
        if name != "accuracy":
            assert r["relative_error_of_sum"] < 2e-2, name
    assert round(rows["accuracy"]["sum"]) == int((logits.argmax(-1) == labels).sum())
    assert rows["accuracy"]["count_exact"]
    square = rows["square"]
    assert square["depth"] == 1 and square["refreshes"] == square["bytes_to_client"] == 0


@pytest.mark.slow
def test_the_loss_bench_table_has_a_row_per_loss(loss_record: dict) -> None:
    table = loss_bench.markdown(loss_record)
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + len(loss_record["losses"])
    assert len({ln.count("|") for ln in lines}) == 1
    assert "quick mode" in table and "round trip to the client" in table
    assert "forward pass comes on top" in table


def test_the_row_sum_needs_the_power_of_two_steps_below_the_padded_rows() -> None:
    assert loss_bench.row_sum_steps(1000) == [1 << k for k in range(10)]
    assert loss_bench.row_sum_steps(100) == [1, 2, 4, 8, 16, 32, 64]
    assert loss_bench.row_sum_steps(1) == []

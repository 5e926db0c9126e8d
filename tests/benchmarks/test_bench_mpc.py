"""Smoke test of the MPC bench (`benchmarks`) at tiny shapes: real parties (model
owner, data owner, dealer as three processes), both implementations measured in one run,
ratios computed from the measured rows, published figures kept apart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.cases import OP_CASES, LayerSize, OpCase
from benchmarks.crypten_baselines import crypten_bert_layer, crypten_decode_errors
from benchmarks.inputs import EncoderLayer, layer_input, op_input
from benchmarks.layer import layer_run
from benchmarks.ops import op_section
from benchmarks.published import PUBLISHED
from benchmarks.records import write
from benchmarks.traffic import combine
from protocols.mpc.reveal import decode

SMALL_LAYER = LayerSize("smoke", hidden=32, heads=2, intermediate=64, seq=8)


def test_inputs_have_the_documented_ranges() -> None:
    gelu = op_input("GELU", (64, 256), 0)
    assert 2.5 < float(gelu.std()) < 3.5 and float(gelu.abs().max()) <= 12.0
    scores = op_input("softmax", (4, 32, 32), 0)
    assert float((scores.amax(-1) - scores.amin(-1)).max()) < 30
    rows = op_input("LayerNorm", (64, 128), 0).double().var(-1, unbiased=False)
    assert float(rows.min()) >= 1e-2 * 0.99 and float(rows.max()) <= 1e2 * 1.01


def test_combine_takes_the_larger_party_and_adds_the_dealer() -> None:
    mo = dict(bytes_sent=3_000_000, bytes_received=2_000_000, rounds=5, dealer_bytes_sent=10,
              dealer_bytes_received=1_000_000, dealer_rounds=2)  # fmt: skip
    do = dict(bytes_sent=2_000_000, bytes_received=3_000_000, rounds=6, dealer_bytes_sent=0,
              dealer_bytes_received=0, dealer_rounds=0)  # fmt: skip
    row = combine(mo, do)
    assert row["rounds"] == 6 and row["mb_sent_per_party"] == 3.0
    assert math.isclose(row["dealer_mb"], 1.00001)
    assert row["mb_sent_plus_received_per_party"] == 5.0


# one of ours and CrypTen's baseline per op (the other variants run the same code paths)
SMOKE_CASES = tuple(
    OpCase(c.op, c.shape, (c.variants[0], c.baseline), c.baseline) for c in OP_CASES
)


def test_cryptens_decode_errors_are_counted_on_exactly_decoded_outputs() -> None:
    ring = torch.tensor([-2621433, -65536 * 3, 65536 * 2 + 5, -7], dtype=torch.long)
    values = decode(ring, 2**16)
    assert torch.equal(values, ring.double() / 2**16)
    assert crypten_decode_errors(values, 2**16) == 1  # -39.9999 comes back as -40.9999


@pytest.fixture(scope="module")
def record() -> dict:
    ops = op_section(quick=True, selection=SMOKE_CASES)
    layers = [layer_run(SMALL_LAYER, repeats=1)]
    return {"quick": True, "ops": ops, "layers": layers, "published_elsewhere": PUBLISHED}


@pytest.mark.slow  # make test-all: a heavier duplicate of a default check
def test_ops_are_measured_side_by_side(record: dict) -> None:
    rows = record["ops"]["rows"]
    assert {r["variant"] for r in rows} == {v for c in SMOKE_CASES for v in c.variants}
    assert sum(r["is_baseline"] for r in rows) == len(SMOKE_CASES)
    for r in rows:
        assert r["rounds"] > 0 and r["mb_sent_per_party"] > 0 and r["dealer_mb"] > 0
        assert r["seconds"] > 0 and math.isfinite(r["max_abs_error"])
        if r["ours"]:
            assert r["ratio_ours_over_crypten"]["rounds"] > 0
        else:
            assert r["ratio_ours_over_crypten"] is None
    errors = {r["variant"]: r["max_abs_error"] for r in rows}
    assert errors["gelu.product"] < 0.02 and errors["softmax.product"] < 0.02
    assert errors["layer_norm.product"] < 0.01


@pytest.mark.slow  # make test-all: a heavier duplicate of a default check
def test_the_layer_runs_through_the_product_path_and_crypten(record: dict) -> None:
    layer = record["layers"][0]
    assert "error" not in layer, layer.get("error")
    for key in ("ours", "crypten"):
        row = layer[key]
        assert row["rounds"] > 0 and row["mb_sent_per_party"] > 0 and row["cosine"] > 0.99
        assert row["traffic_same_every_repeat"]
    assert set(layer["ours_by_op"]) >= {"matmul", "softmax", "layer_norm", "gelu"}
    assert layer["ratio_ours_over_crypten"]["mb_sent_per_party"] > 0
    assert layer["plain_seconds"] > 0
    # the weights' masks are opened once, offline: 8 bytes per product weight and party
    offline = layer["ours"]["offline"]
    h, i = layer["size"]["hidden"], layer["size"]["intermediate"]
    weights = 4 * h * h + 2 * h * i  # query, key, value, output; intermediate, output
    assert offline["weights_opened"] == 6
    assert offline["mb_sent_per_party"] * 1e6 >= 8 * weights
    assert offline["rounds"] <= 3
    # SPU's row: measured where `make spu` installed it, else a row saying how to get it
    spu = layer["spu"]
    assert ("make spu" in spu["error"]) if "error" in spu else spu["mb_sent_per_party"] > 0


@pytest.mark.slow  # make test-all: a heavier duplicate of a default check
def test_markdown_and_json_keep_published_figures_apart(record: dict, tmp_path: Path) -> None:
    table = write(record, tmp_path)
    assert (tmp_path / "mpc.quick.md").read_text().strip() == table.strip()
    assert not (tmp_path / "mpc.json").exists()  # a quick run never replaces real figures
    saved = json.loads((tmp_path / "mpc.quick.json").read_text())
    assert '"y":' not in json.dumps(saved)
    measured, published = table.split("**Published / measured elsewhere**")
    # DESIGN's published 746 MB sits in its own table, never among the measured rows (a
    # measured figure may contain the digits, as 0.746 did once: match the cell)
    assert "| 746 |" in published and "| 746 |" not in measured
    assert "Quick run" in measured and "| smoke" in measured


def test_the_crypten_layer_by_hand_matches_torch_in_plaintext_form() -> None:
    """The hand-written layer's structure equals BertLayer's (checked on plain tensors with
    a stand-in that has CrypTen's method names)."""

    class Plain:
        def __init__(self, t: torch.Tensor) -> None:
            self.t = t

        def __getattr__(self, name: str):  # delegate to torch
            attr = getattr(self.t, name)
            if not callable(attr):
                return attr

            def call(*args, **kwargs):
                args = [a.t if isinstance(a, Plain) else a for a in args]
                out = attr(*args, **kwargs)
                return Plain(out) if isinstance(out, torch.Tensor) else out

            return call

        def _op(self, other, fn):
            return Plain(fn(self.t, other.t if isinstance(other, Plain) else other))

        def __add__(self, o):
            return self._op(o, torch.add)

        def __radd__(self, o):
            return self._op(o, torch.add)

        def __sub__(self, o):
            return self._op(o, torch.sub)

        def __mul__(self, o):
            return self._op(o, torch.mul)

        def sigmoid(self):
            return Plain(torch.sigmoid(self.t))

        def inv_sqrt(self):
            return Plain(torch.rsqrt(self.t))

    module = EncoderLayer(SMALL_LAYER, 0).double().eval()
    x = layer_input(SMALL_LAYER, 1).double()
    weights = {
        n: Plain(p.detach().t() if p.dim() == 2 else p.detach())
        for n, p in module.layer.named_parameters()
    }
    got = crypten_bert_layer(Plain(x), weights, SMALL_LAYER.heads, module.eps, lambda s: None)
    want = module(x)
    gelu_gap = 0.1  # x sigmoid(1.702 x) is not GELU: differences of this order pass through
    assert (got.t - want).abs().max() < gelu_gap

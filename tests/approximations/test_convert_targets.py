"""`convert(model, target=..., samples=...)` on small plain-torch models: the targets'
defaults, the forms samples take, per-site calibration (held-out inputs inside every
interval, across widths, head counts and sequence lengths), the replay record, and the
one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from approximations import calibration as cal
from approximations.conversion import DEFAULT_METHODS, calibration_record, convert
from approximations.errors import ConversionError
from approximations.modules import PolyGELU, PolyLayerNorm, PowerSoftmax


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm, nn.MultiheadAttention, GELU MLP) whose query,
    key and MLP weights are scaled up like a trained model's outliers (GELU inputs beyond
    +-10, attention scores beyond +-20 for inputs of scale 3)."""

    def __init__(self, width: int = 8, heads: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.act = nn.GELU()
        self.down = nn.Linear(2 * width, width)
        with torch.no_grad():
            self.attn.in_proj_weight[: 2 * width].mul_(6.0)
            self.up.weight.mul_(8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.down(self.act(self.up(self.ln2(x))))


class Keyword(nn.Module):
    """A model called with a keyword input."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Block()

    def forward(self, *, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def inputs(batch: int, seq: int = 4, width: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, seq, width, generator=torch.Generator().manual_seed(seed)) * 3


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def site_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(min, max) per converted site on `x`: GELU input, LayerNorm var + eps,
    power-softmax normaliser (as `calibration.observe` records them)."""
    sites = {
        m: kind
        for m, kind in (
            (m, "gelu" if isinstance(m, PolyGELU) else "layernorm")
            for m in model.modules()
            if isinstance(m, (PolyGELU, PolyLayerNorm))
        )
    }
    sites.update({m: "softmax" for m in model.modules() if isinstance(m, PowerSoftmax)})
    seen = cal.observe(model, cal.batches(x), sites)
    names = {m: n for n, m in model.named_modules()}
    return {names[m]: o.values.as_tuple() for m, o in seen.items()}


# --- targets --------------------------------------------------------------------------------
def test_without_a_target_the_defaults_are_unchanged() -> None:
    """target None (and "mpc") keep today's defaults: PUMA's GELU, power-softmax with the
    row maximum, LayerNorm kept; nothing calibrated."""
    for target in (None, "mpc"):
        converted, replaced = convert(Block(), target=target)
        kinds = {r.path: r.new for r in replaced}
        assert kinds == {
            "attn.attention_softmax": "PowerSoftmax(p=4, dim=-1, normalizer='sum', eps=1e-06)",
            "act": "PolyGELU(method='puma_refit')",
        }
        assert isinstance(converted.ln1, nn.LayerNorm)
        assert all(r.observed is None and r.interval is None for r in replaced)
    assert DEFAULT_METHODS[None] == {"gelu": "puma_refit", "softmax": "power", "layernorm": None}


def test_he_target_picks_polynomial_methods_and_calibrates_each_site() -> None:
    model = Block()
    converted, replaced = convert(model, target="he", samples=inputs(32))
    by_path = {r.path: r for r in replaced}
    assert set(by_path) == {"ln1", "attn.attention_softmax", "ln2", "act"}
    gelu, softmax = converted.act, converted.attn.attention_softmax
    assert isinstance(gelu, PolyGELU) and gelu.method == "minimax" and gelu.interval is not None
    assert isinstance(converted.ln1, PolyLayerNorm) and converted.ln1.rsqrt == "poly"
    assert isinstance(softmax, PowerSoftmax)
    assert (softmax.p, softmax.normalizer, softmax.eps) == (4, "mean", 1e-3)
    assert (
        isinstance(softmax.scale, float)
        and softmax.scale == by_path["attn.attention_softmax"].scale
    )
    for r in replaced:  # what was seen lies inside what was chosen; errors are reported
        assert r.observed is not None and r.interval is not None
        assert r.interval[0] <= r.observed[0] <= r.observed[1] <= r.interval[1], r
    assert by_path["act"].max_error <= 1e-3 * by_path["act"].interval[1]
    assert by_path["ln1"].max_error <= 1e-3


@pytest.mark.parametrize(("width", "heads", "seq"), [(8, 2, 3), (12, 3, 6), (16, 4, 9)])
def test_held_out_inputs_stay_inside_every_calibrated_interval(
    width: int, heads: int, seq: int
) -> None:
    """Calibrated on 32 sequences, run on 32 others: every site's held-out inputs inside its
    interval, and the GELU and LayerNorm polynomials close to the exact ones."""
    model = Block(width, heads, seed=width)
    calibration = inputs(32, seq, width, seed=1)
    held_out = inputs(32, seq, width, seed=2)
    converted, replaced = convert(model, target="he", samples=calibration)
    seen = site_inputs(converted, held_out)
    for r in replaced:
        lo, hi = seen[r.path]
        assert r.interval is not None and r.interval[0] <= lo <= hi <= r.interval[1], (r, lo, hi)
    polynomial_only, _ = convert(model, target="he", softmax=None, samples=calibration)
    with torch.no_grad():
        reference, approximated = model(held_out), polynomial_only(held_out)
    assert cosine(approximated, reference) >= 0.9999


def test_the_converted_model_sees_what_the_calibration_saw() -> None:
    """The ranges reported are those of the converted model's own sites on the calibration
    inputs (the probe ran the final power-softmax, with exact GELU and LayerNorm)."""
    x = inputs(16)
    converted, replaced = convert(Block(), target="he", samples=x)
    seen = site_inputs(converted, x)
    for r in replaced:
        lo, hi = seen[r.path]
        assert r.observed is not None
        scale = max(abs(r.observed[0]), abs(r.observed[1]), 1.0)
        assert r.observed[0] <= lo * (1 + 1e-3) + 1e-3 * scale, r
        assert hi <= r.observed[1] * (1 + 1e-3) + 1e-3 * scale, r


# --- samples --------------------------------------------------------------------------------
def test_every_form_of_samples_calibrates_the_same() -> None:
    x = inputs(12)
    expected = calibration_record(convert(Block(), target="he", samples=x)[1])
    for samples in ((x,), [x], [x[:5], x[5:]], (b for b in (x[:7], x[7:])), [[x[:6]], (x[6:],)]):
        assert calibration_record(convert(Block(), target="he", samples=samples)[1]) == expected
    keyword = calibration_record(convert(Keyword(), target="he", samples={"x": x})[1])
    assert keyword == {f"block.{path}": entry for path, entry in expected.items()}


def test_calibration_restores_training_mode_and_inplace_works() -> None:
    model = Block().train()
    converted, _ = convert(model, target="he", samples=inputs(8), inplace=True)
    assert converted is model and model.training and model.ln2.training
    assert isinstance(model.ln2, PolyLayerNorm)


def test_a_calibration_record_replays_the_conversion() -> None:
    x = inputs(16)
    first, replaced = convert(Block(), target="he", samples=x)
    record = json.loads(json.dumps(calibration_record(replaced)))
    again, replayed = convert(Block(), target="he", calibration=record)
    assert [r.new for r in replayed] == [r.new for r in replaced]
    assert [r.interval for r in replayed] == [r.interval for r in replaced]
    with torch.no_grad():
        assert torch.equal(first(x), again(x))


def test_explicit_choices_win_over_the_target_and_the_samples() -> None:
    x = inputs(16)
    converted, replaced = convert(
        Block(),
        target="he",
        gelu="quad",
        samples=x,
        softmax_options={"p": 2, "scale": 10.0},
        layernorm_interval=(0.5, 64.0),
    )
    assert converted.act.method == "quad" and converted.act.interval is None
    softmax = converted.attn.attention_softmax
    assert (softmax.p, softmax.scale, softmax.normalizer, softmax.eps) == (2, 10.0, "mean", 1e-3)
    assert converted.ln1.interval == converted.ln2.interval == (0.5, 64.0)
    assert {r.path: r.observed is not None for r in replaced} == {
        "ln1": True,
        "attn.attention_softmax": True,
        "ln2": True,
        "act": True,
    }


def test_functional_gelu_and_shared_modules_are_calibrated() -> None:
    """nn.TransformerEncoder: the GELU is the function F.gelu held by each layer, and both
    layers share nothing; a module used at two paths gets one interval covering both."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    with torch.no_grad():
        for each in encoder.layers:
            each.linear1.weight.mul_(8.0)
    converted, replaced = convert(encoder, target="he", samples=inputs(16))
    gelus = [r for r in replaced if r.kind == "gelu"]
    assert [r.path for r in gelus] == ["layers.0.activation", "layers.1.activation"]
    assert all(r.interval is not None and r.interval[1] > 8 for r in gelus)
    shared_gelu = nn.GELU()
    model = nn.Sequential(nn.Linear(8, 8), shared_gelu, nn.Linear(8, 8), shared_gelu)
    with torch.no_grad():
        model[2].weight.mul_(10.0)
    converted, replaced = convert(model, target="he", samples=torch.randn(16, 8) * 3)
    assert converted[1] is converted[3]
    first, second = (r for r in replaced if r.kind == "gelu")
    assert converted[1].interval[1] >= max(abs(v) for v in (*first.observed, *second.observed))


# --- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "he"}, "samples="),
        ({"target": "gpu"}, "target='gpu'"),
        ({"target": "he", "gelu": "puma", "samples": "x"}, "piecewise GELU"),
        ({"target": "he", "layernorm": "newton", "samples": "x"}, "comparisons"),
        ({"target": "he", "softmax_options": {"scale": True}, "samples": "x"}, "row's maximum"),
        ({"target": "he", "samples": "x", "calibration": {}}, "give one"),
        ({"target": "he", "samples": "abc"}, "got a str"),
        ({"target": "he", "samples": []}, "no batches"),
        ({"target": "he", "samples": [3]}, "batch 0 is a int"),
        ({"target": "he", "samples": torch.zeros(2, 5)}, "failed on batch 0"),
        ({"target": "he", "calibration": {"nowhere": {"interval": [0, 1]}}}, "nowhere"),
        ({"target": "he", "calibration": {"ln1": 5}}, "entry for ln1"),
        ({"target": "he", "calibration": {"ln1": {"interval": [0.25, 128]}}}, "LayerNorm at ln2"),
        ({"layernorm": "poly"}, "samples="),
        ({"layernorm": "fast"}, "layernorm='fast'"),
    ],
)
def test_errors_name_the_argument_in_one_line(kwargs: dict, message: str) -> None:
    samples = kwargs.get("samples")
    if isinstance(samples, str) and samples == "x":
        kwargs = {**kwargs, "samples": inputs(4)}
    with pytest.raises(ConversionError) as caught:
        convert(Block(), **kwargs)
    text = str(caught.value)
    assert message in text and "\n" not in text, text


def test_without_calibration_the_catalog_gelu_diverges_on_outliers() -> None:
    """Why calibrate: GELU inputs of the outlier block reach beyond +-8, where the catalog's
    minimax polynomial diverges; fitted on the calibrated range it stays accurate."""
    model, x = Block(), inputs(16, seed=3)
    catalog, _ = convert(model, target="he", softmax=None, layernorm_interval=(0.25, 128.0))
    calibrated, _ = convert(model, target="he", softmax=None, samples=inputs(32))
    with torch.no_grad():
        reference = model(x)
        assert float((catalog(x) - reference).abs().max()) > 10.0
        assert float((calibrated(x) - reference).abs().max()) < 0.1

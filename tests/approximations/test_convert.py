"""Tests of `approximations.convert` on plain torch models and tiny random BERT, ViT, GPT-2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from approximations.conversion import (
    SOFTMAX_ATTRIBUTE,
    ExplicitMultiheadAttention,
    Replacement,
    convert,
)
from approximations.errors import ConversionError
from approximations.modules import PolyGELU, PolyLayerNorm, PowerSoftmax

transformers = pytest.importorskip("transformers")

HIDDEN, HEADS = 32, 2
HF_GELU_CLASSES = ("GELUActivation", "NewGELUActivation")
HF_ATTENTION_CLASSES = ("BertSelfAttention", "ViTAttention", "GPT2Attention")

# Measured on these tiny random models (seed 0): cosine of last_hidden_state with PUMA GELU
# alone is >= 0.9993 (BERT 0.999998, ViT 0.99971, GPT-2 0.99939), max abs error <= 0.2.
PUMA_COSINE = 0.998
PUMA_MAX_ABS = 0.3
# Exact settings (exact GELU / LayerNorm, exact masked softmax plugged into the converted
# attention) reproduce the original up to float32 rounding.
EXACT_ATOL = 1e-5


# --- tiny models ----------------------------------------------------------------------------
def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=64,
        vocab_size=100,
    )
    return transformers.BertModel(config).eval()


def tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=HIDDEN,
        n_layer=2,
        n_head=HEADS,
        vocab_size=100,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    return transformers.GPT2Model(config).eval()


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=64,
    )
    return transformers.ViTModel(config).eval()


def text_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 100, (2, 7), generator=generator)
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, 5:] = 0  # the second sequence is padded
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def image_inputs() -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))}


HF_MODELS = {
    "bert": (tiny_bert, text_inputs),
    "vit": (tiny_vit, image_inputs),
    "gpt2": (tiny_gpt2, text_inputs),
}
# GPT-2's activation is the tanh form of GELU: its identity setting is gelu="tanh".
IDENTITY_GELU = {"bert": "exact", "vit": "exact", "gpt2": "tanh"}


def valid_tokens(inputs: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """Positions whose outputs are meaningful (padded tokens of BERT/GPT-2 excluded)."""
    if "attention_mask" in inputs:
        return inputs["attention_mask"].bool()
    return torch.ones(hidden.shape[:2], dtype=torch.bool)


class ExactSoftmax(nn.Module):
    """Reference softmax with a multiplicative mask: exp over kept positions, 0 elsewhere."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return torch.softmax(x, dim=-1)
        keep = mask.expand_as(x) != 0
        return torch.softmax(x.masked_fill(~keep, float("-inf")), dim=-1).masked_fill(~keep, 0.0)


def plug_exact_softmax(model: nn.Module) -> None:
    for module in list(model.modules()):
        if isinstance(getattr(module, SOFTMAX_ATTRIBUTE, None), PowerSoftmax):
            setattr(module, SOFTMAX_ATTRIBUTE, ExactSoftmax())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def paths_of(model: nn.Module, class_names: tuple[str, ...]) -> set[str]:
    return {p for p, m in model.named_modules() if type(m).__name__ in class_names}


def paths_by_kind(replacements: list[Replacement], kind: str) -> set[str]:
    return {r.path for r in replacements if r.kind == kind}


# --- Hugging Face models --------------------------------------------------------------------
@pytest.mark.parametrize("name", HF_MODELS)
def test_hf_replacements_name_every_site(name: str) -> None:
    model = HF_MODELS[name][0]()
    converted, replacements = convert(model, layernorm="newton")

    assert paths_by_kind(replacements, "gelu") == paths_of(model, HF_GELU_CLASSES)
    assert paths_by_kind(replacements, "softmax") == {
        f"{p}.{SOFTMAX_ATTRIBUTE}" for p in paths_of(model, HF_ATTENTION_CLASSES)
    }
    assert paths_by_kind(replacements, "layernorm") == {
        p for p, m in model.named_modules() if isinstance(m, nn.LayerNorm)
    }
    expected_type = {"gelu": PolyGELU, "softmax": PowerSoftmax, "layernorm": PolyLayerNorm}
    for r in replacements:
        assert isinstance(converted.get_submodule(r.path), expected_type[r.kind])
    assert converted.config._attn_implementation == "secinfer_power_softmax"
    # the original is untouched
    assert model.config._attn_implementation != "secinfer_power_softmax"
    assert not any(isinstance(m, (PolyGELU, PolyLayerNorm, PowerSoftmax)) for m in model.modules())


@pytest.mark.parametrize("name", HF_MODELS)
def test_hf_identity_settings_are_exact(name: str) -> None:
    make_model, make_inputs = HF_MODELS[name]
    model, inputs = make_model(), make_inputs()
    with torch.no_grad():
        reference = model(**inputs).last_hidden_state
        gelu_only, _ = convert(model, gelu=IDENTITY_GELU[name], softmax=None)
        torch.testing.assert_close(
            gelu_only(**inputs).last_hidden_state, reference, atol=1e-6, rtol=0
        )

        # everything converted, then the exact softmax plugged into the new attention path:
        # checks scores, scaling, masks (padding, causal), dropout and output layout
        full, _ = convert(model, gelu=IDENTITY_GELU[name], layernorm="exact")
        plug_exact_softmax(full)
        output = full(**inputs).last_hidden_state
    valid = valid_tokens(inputs, reference)
    torch.testing.assert_close(output[valid], reference[valid], atol=EXACT_ATOL, rtol=0)


@pytest.mark.parametrize("name", HF_MODELS)
def test_hf_puma_gelu_within_tolerance(name: str) -> None:
    make_model, make_inputs = HF_MODELS[name]
    model, inputs = make_model(), make_inputs()
    converted, _ = convert(model, gelu="puma", softmax=None)
    with torch.no_grad():
        reference = model(**inputs).last_hidden_state
        output = converted(**inputs).last_hidden_state
    valid = valid_tokens(inputs, reference)
    assert cosine(output[valid], reference[valid]) >= PUMA_COSINE
    assert (output[valid] - reference[valid]).abs().max() <= PUMA_MAX_ABS


def reference_power_weights(scores: torch.Tensor, keep: torch.Tensor, p: int = 4) -> torch.Tensor:
    """x^p / sum x^p over the kept positions, written independently of the library."""
    powered = scores**p * keep
    return powered / powered.sum(dim=-1, keepdim=True)


def split_heads(x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(-1, (HEADS, HIDDEN // HEADS)).transpose(1, 2)


def bert_scores(model: nn.Module, layer: int, hidden: torch.Tensor) -> torch.Tensor:
    attention = model.encoder.layer[layer].attention.self
    q, k = split_heads(attention.query(hidden)), split_heads(attention.key(hidden))
    return q @ k.transpose(-1, -2) / (HIDDEN // HEADS) ** 0.5


def gpt2_scores(model: nn.Module, layer: int, hidden: torch.Tensor) -> torch.Tensor:
    block = model.h[layer]
    q, k, _ = block.attn.c_attn(block.ln_1(hidden)).split(HIDDEN, dim=2)
    return split_heads(q) @ split_heads(k).transpose(-1, -2) / (HIDDEN // HEADS) ** 0.5


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_hf_power_softmax_attention_probabilities(name: str) -> None:
    model = HF_MODELS[name][0]()
    inputs = text_inputs()
    converted, _ = convert(model)
    with torch.no_grad():
        out = converted(**inputs, output_attentions=True, output_hidden_states=True)
    padding = inputs["attention_mask"].bool()[:, None, None, :]
    length = padding.shape[-1]
    keep = padding
    if name == "gpt2":
        keep = keep & torch.ones(length, length, dtype=torch.bool).tril()
    scores_of = bert_scores if name == "bert" else gpt2_scores
    for layer, weights in enumerate(out.attentions):
        with torch.no_grad():
            scores = scores_of(converted, layer, out.hidden_states[layer])
        expected = reference_power_weights(scores, keep.float())
        torch.testing.assert_close(weights, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            weights.sum(-1), torch.ones_like(weights.sum(-1)), atol=1e-5, rtol=0
        )
        assert (weights[~keep.expand_as(weights)] == 0).all()  # padding and causal: exactly 0


def test_vit_power_softmax_rows_sum_to_one() -> None:
    converted, _ = convert(tiny_vit())
    with torch.no_grad():
        attentions = converted(**image_inputs(), output_attentions=True).attentions
    for weights in attentions:
        assert (weights >= 0).all()
        torch.testing.assert_close(
            weights.sum(-1), torch.ones_like(weights.sum(-1)), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("name", HF_MODELS)
def test_hf_gradients_flow(name: str) -> None:
    make_model, make_inputs = HF_MODELS[name]
    model, inputs = make_model().train(), make_inputs()
    converted, _ = convert(model, layernorm="newton")

    def gradients(m: nn.Module) -> dict[str, torch.Tensor | None]:
        torch.manual_seed(2)  # same dropout masks
        m(**inputs).last_hidden_state.pow(2).mean().backward()
        return {n: p.grad for n, p in m.named_parameters()}

    original, new = gradients(model), gradients(converted)
    had_gradient = [n for n, g in original.items() if g is not None and g.abs().sum() > 0]
    assert had_gradient
    for n in had_gradient:
        assert new[n] is not None, n
        assert torch.isfinite(new[n]).all(), n
        assert new[n].abs().sum() > 0, n
    # the replaced modules are on the autograd path: LayerNorm weights, and query/key
    # weights, which receive gradient only through the (power) softmax
    for path, module in converted.named_modules():
        if isinstance(module, PolyLayerNorm):
            assert module.weight.grad.abs().sum() > 0, path
    query_key = [
        n for n in new if any(s in n for s in ("query.weight", "q_proj.weight", "c_attn.weight"))
    ]
    assert query_key and all(new[n].abs().sum() > 0 for n in query_key)


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_hf_torch_export(name: str) -> None:
    model, inputs = HF_MODELS[name][0](), text_inputs()
    converted, _ = convert(model, layernorm="newton")
    program = torch.export.export(converted, (), kwargs=inputs, strict=False)
    with torch.no_grad():
        expected = converted(**inputs).last_hidden_state
        exported = program.module()(**inputs).last_hidden_state
    torch.testing.assert_close(exported, expected, atol=1e-6, rtol=0)
    other = {**inputs, "attention_mask": torch.ones_like(inputs["attention_mask"])}
    with torch.no_grad():  # the mask is an input of the program, not a constant
        torch.testing.assert_close(
            program.module()(**other).last_hidden_state,
            converted(**other).last_hidden_state,
            atol=1e-6,
            rtol=0,
        )


# --- plain torch models ---------------------------------------------------------------------
def tiny_encoder() -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, activation="gelu", batch_first=True
    )
    return nn.TransformerEncoder(layer, num_layers=2).eval()


def encoder_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, 3:] = True  # True = ignore, torch's convention
    return src, padding


def test_encoder_replacements_name_every_site() -> None:
    model = tiny_encoder()
    converted, replacements = convert(model, layernorm="newton")
    layers = ("layers.0", "layers.1")
    assert paths_by_kind(replacements, "gelu") == {f"{p}.activation" for p in layers}
    assert paths_by_kind(replacements, "softmax") == {
        f"{p}.self_attn.{SOFTMAX_ATTRIBUTE}" for p in layers
    }
    assert paths_by_kind(replacements, "layernorm") == {
        f"{p}.norm{i}" for p in layers for i in (1, 2)
    }
    assert all(
        isinstance(layer.self_attn, ExplicitMultiheadAttention) for layer in converted.layers
    )
    assert all(isinstance(layer.activation, PolyGELU) for layer in converted.layers)
    assert model.layers[0].activation is F.gelu  # the original is untouched


def test_encoder_identity_settings_are_exact() -> None:
    model = tiny_encoder()
    src, padding = encoder_inputs()
    converted, _ = convert(model, gelu="exact", layernorm="exact")
    plug_exact_softmax(converted)
    with torch.no_grad():
        reference = model(src, src_key_padding_mask=padding)  # torch's fused fast path
        output = converted(src, src_key_padding_mask=padding)
    valid = ~padding
    torch.testing.assert_close(output[valid], reference[valid], atol=EXACT_ATOL, rtol=0)


def test_encoder_fast_path_does_not_bypass_replacements() -> None:
    """Under no_grad in eval mode torch would run its fused kernel and ignore the new modules."""
    converted, _ = convert(tiny_encoder(), layernorm="newton")
    src, padding = encoder_inputs()
    with torch.no_grad():
        fast_path_conditions = converted(src, src_key_padding_mask=padding)
    module_path = converted(src, src_key_padding_mask=padding)  # grad enabled: never fused
    torch.testing.assert_close(fast_path_conditions, module_path.detach(), atol=1e-6, rtol=0)
    with torch.no_grad():
        original = tiny_encoder()(src, src_key_padding_mask=padding)
    assert (fast_path_conditions - original)[~padding].abs().max() > 1e-4  # approximations ran


def test_encoder_gradients_and_export() -> None:
    converted, _ = convert(tiny_encoder(), layernorm="newton")
    src, padding = encoder_inputs()
    converted(src, src_key_padding_mask=padding).pow(2).mean().backward()
    for name, parameter in converted.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    program = torch.export.export(
        converted, (src,), {"src_key_padding_mask": padding}, strict=False
    )
    with torch.no_grad():
        torch.testing.assert_close(
            program.module()(src, src_key_padding_mask=padding),
            converted(src, src_key_padding_mask=padding),
            atol=1e-6,
            rtol=0,
        )


@pytest.mark.parametrize(
    "options",
    [
        {"batch_first": True},
        {"batch_first": False, "kdim": 6, "vdim": 5},
        {"batch_first": True, "add_bias_kv": True, "add_zero_attn": True},
        {"batch_first": True, "bias": False},
    ],
    ids=["batch_first", "kdim_vdim", "bias_kv_zero_attn", "no_bias"],
)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_explicit_multihead_attention_matches_torch(options: dict, mask_dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, **options).eval()
    explicit = ExplicitMultiheadAttention.from_multihead_attention(mha, ExactSoftmax())
    batch, target, source = 3, 4, 5
    query = torch.randn(batch, target, 8)
    key = torch.randn(batch, source, options.get("kdim", 8))
    value = torch.randn(batch, source, options.get("vdim", 8))
    if not options["batch_first"]:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    blocked = torch.rand(target, source, generator=torch.Generator().manual_seed(3)) < 0.3
    blocked[:, 0] = False  # no fully masked row (torch gives NaN there)
    padding = torch.zeros(batch, source, dtype=torch.bool)
    padding[1, 3:] = True
    if mask_dtype != torch.bool:
        blocked = torch.zeros(target, source).masked_fill(blocked, float("-inf"))
        padding = torch.zeros(batch, source).masked_fill(padding, float("-inf"))
    for average in (True, False):
        kwargs = {
            "key_padding_mask": padding,
            "attn_mask": blocked,
            "average_attn_weights": average,
        }
        with torch.no_grad():
            expected_out, expected_weights = mha(query, key, value, **kwargs)
            out, weights = explicit(query, key, value, **kwargs)
        torch.testing.assert_close(out, expected_out, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-5)


def test_explicit_multihead_attention_unbatched_and_causal() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    explicit = ExplicitMultiheadAttention.from_multihead_attention(mha, ExactSoftmax())
    x = torch.randn(5, 8)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        expected, _ = mha(x, x, x, attn_mask=causal, is_causal=True)
        torch.testing.assert_close(
            explicit(x, x, x, attn_mask=causal)[0], expected, atol=1e-6, rtol=0
        )
        torch.testing.assert_close(
            explicit(x, x, x, is_causal=True)[0], expected, atol=1e-6, rtol=0
        )
    out, weights = explicit(x, x, x, need_weights=False)
    assert out.shape == (5, 8) and weights is None


def test_softmax_module_keeps_its_dim() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=0))
    converted, replacements = convert(model, softmax_options={"p": 6})
    assert replacements == [
        Replacement(
            "1", "softmax", "Softmax", "PowerSoftmax(p=6, dim=0, normalizer='sum', eps=1e-06)"
        )
    ]
    weights = converted(torch.randn(3, 4))
    torch.testing.assert_close(weights.sum(0), torch.ones(4), atol=1e-5, rtol=0)


def test_shared_and_functional_gelu() -> None:
    shared = nn.GELU()
    model = nn.Sequential(nn.Linear(4, 4), shared, nn.Linear(4, 4), shared)
    converted, replacements = convert(model, softmax=None)
    assert [r.path for r in replacements] == ["1", "3"]
    assert converted[1] is converted[3] and isinstance(converted[1], PolyGELU)


def test_inplace() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    converted, _ = convert(model, inplace=True)
    assert converted is model and isinstance(model[1], PolyGELU)
    copy_, _ = convert(nn.Sequential(nn.GELU()))
    assert isinstance(copy_[0], PolyGELU)


# --- errors -----------------------------------------------------------------------------------
class InlineAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (
            nn.Linear(2, 2),
            {},
            r"^convert\(model=\.\.\.\): found no GELU or softmax to replace in Linear",
        ),
        (nn.Linear(2, 2), {"layernorm": "newton"}, "found no GELU, softmax or LayerNorm"),
        (nn.Linear(2, 2), {"gelu": None, "softmax": None}, "nothing requested"),
        (nn.GELU(), {}, r"the model is itself a GELU"),
        (nn.GELU(), {"gelu": "nope"}, r"gelu='nope'"),
        (nn.GELU(), {"softmax": "exp"}, r"softmax='exp'"),
        (nn.GELU(), {"layernorm": "nope"}, r"layernorm='nope'"),
        (nn.GELU(), {"layernorm": "poly"}, r"layernorm='poly'.*interval"),
        (nn.GELU(), {"softmax_options": {"p": 3}}, "softmax_options"),
        (nn.GELU(), {"softmax_options": {"dim": 1}}, "softmax_options.*dim"),
        (nn.GELU(), {"softmax_options": {"bogus": 1}}, "softmax_options"),
        (nn.Sequential(nn.Softmax()), {}, r"nn.Softmax at 0 has dim=None"),
        (nn.Sequential(nn.GELU(), InlineAttention()), {}, r"1 \(InlineAttention\) computes"),
    ],
)
def test_errors(model: nn.Module, kwargs: dict, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        convert(model, **kwargs)


def test_error_messages_are_one_line() -> None:
    with pytest.raises(ConversionError) as info:
        convert(nn.Linear(2, 2))
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_inline_attention_left_alone_without_softmax() -> None:
    model = nn.Sequential(nn.GELU(), InlineAttention())
    _, replacements = convert(model, softmax=None)
    assert [r.kind for r in replacements] == ["gelu"]


# --- other Hugging Face families --------------------------------------------------------------
def test_llama_grouped_query_attention_wiring_is_exact() -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    model, inputs = transformers.LlamaModel(config).eval(), text_inputs()
    converted, replacements = convert(model, gelu=None)
    assert [r.kind for r in replacements] == ["softmax", "softmax"]  # SiLU and RMSNorm stay
    plug_exact_softmax(converted)
    with torch.no_grad():
        reference = model(**inputs).last_hidden_state
        output = converted(**inputs).last_hidden_state
    valid = valid_tokens(inputs, reference)
    torch.testing.assert_close(output[valid], reference[valid], atol=EXACT_ATOL, rtol=0)


def test_t5_position_bias_is_refused_clearly() -> None:
    config = transformers.T5Config(
        d_model=HIDDEN, d_ff=64, num_layers=1, num_heads=HEADS, d_kv=16, vocab_size=100
    )
    converted, _ = convert(transformers.T5EncoderModel(config).eval())
    with pytest.raises(ConversionError, match=r"T5Attention.*position_bias.*softmax=None"):
        converted(input_ids=text_inputs()["input_ids"])


def test_the_package_attribute_convert_is_the_function_every_time():
    """`approximations.convert` is loaded lazily; it once recursed forever, and a submodule
    of the same name rebound it to the module once imported (this file imports it first)."""
    import approximations

    first = approximations.convert
    assert callable(first) and first is approximations.convert
    assert approximations.Replacement.__name__ == "Replacement"

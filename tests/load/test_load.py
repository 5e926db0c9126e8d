"""secinfer.load: every format loads into a program equal to the original forward, and every
user mistake is one `UserError` line naming the file or input."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers as T
from safetensors.torch import save_file
from torch import nn

from secinfer.errors import UserError
from secinfer.load import LoadedModel, encode_text, load_model, read_input
from secinfer.zoo import digits

DATA = Path(__file__).parents[2] / "secinfer" / "data"
TOL = 1e-5
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(95)]]


def small_module() -> nn.Module:
    """A tiny MLP with LayerNorm and GELU, in eval mode."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3)).eval()


def user_error(call: Callable[[], Any], *needles: str) -> str:
    """Run `call`, expect a one-line UserError containing every needle; return the message."""
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def run(loaded: LoadedModel, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The loaded program's output on `inputs` (after the loader's own input check)."""
    program = loaded.program_for(inputs)
    loaded.check_inputs(inputs)
    with torch.no_grad():
        return program.module()(*inputs)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference."""
    return (a.detach() - b.detach()).abs().max().item()


# --- torch.export, TorchScript, pickles -----------------------------------------------------
def test_export_archive_detected_by_content_under_pt_suffix(tmp_path: Path) -> None:
    module = small_module()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, (torch.randn(2, 4),), dynamic_shapes=({0: batch},))
    path = tmp_path / "model.pt"
    torch.export.save(program, str(path))
    loaded = load_model(path)
    assert loaded.source == "torch.export" and loaded.input_names == ["input"]
    assert loaded.output_name == "output" and loaded.tokenizer is None
    with torch.no_grad():
        got = loaded.program.module()(*loaded.example_inputs)
        assert max_error(got, module(*loaded.example_inputs)) < TOL
        x = torch.randn(5, 4)
        assert max_error(run(loaded, (x,)), module(x)) < TOL
    user_error(
        lambda: loaded.check_inputs((torch.randn(65, 4),)), "input input", "dimension 0 is 65"
    )


def test_bundled_export_archive_loads() -> None:
    loaded = load_model(DATA / "digits.pt2")
    x = digits.load_split(0)[2][:3]
    with torch.no_grad():
        assert max_error(run(loaded, (x,)), digits.load_model(DATA / "digits.safetensors")(x)) < TOL


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_needs_inputs_then_matches(tmp_path: Path) -> None:
    module = small_module()
    path = tmp_path / "scripted.bin"
    torch.jit.save(torch.jit.script(module), str(path))
    user_error(lambda: load_model(path), str(path), "TorchScript archive holds code")
    loaded = load_model(path, trust_model=True)  # code: only on the user's word
    assert loaded.source == "torchscript" and loaded.program is None
    assert loaded.example_inputs == () and loaded.input_names == ["input"]
    user_error(lambda: loaded.check_inputs(()), str(path), "--input")
    user_error(lambda: loaded.program_for((torch.ones(2, 4), torch.ones(2, 4))), "1 input(s)")
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert max_error(run(loaded, (x,)), module(x)) < TOL
        y = torch.randn(7, 4)  # another batch size: exported again if needed
        assert max_error(run(loaded, (y,)), module(y)) < TOL
    user_error(lambda: loaded.program_for((x.double(),)), "input input", "dtype float64")


def test_pickled_module_refused_without_trust_loaded_with_it(tmp_path: Path) -> None:
    module = small_module()
    path = tmp_path / "model.pt"
    torch.save(module, path)
    user_error(
        lambda: load_model(path), str(path), "run code", "--trust-model", "torch.export.save"
    )
    loaded = load_model(path, trust_model=True)
    assert loaded.source == "pickle" and loaded.program is None
    user_error(lambda: loaded.check_inputs(()), "--input")
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert max_error(run(loaded, (x,)), module(x)) < TOL
    user_error(lambda: loaded.check_inputs((torch.randn(3, 5),)), "input input", "(3, 5)")


def test_legacy_pickle_of_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(small_module(), path, _use_new_zipfile_serialization=False)
    user_error(lambda: load_model(path), str(path), "--trust-model")


@pytest.mark.parametrize("legacy", [False, True])
def test_state_dict_is_refused_for_lack_of_architecture(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "weights.pt"
    torch.save(small_module().state_dict(), path, _use_new_zipfile_serialization=not legacy)
    user_error(lambda: load_model(path), str(path), "without the architecture", "torch.export")


def test_safetensors_without_secinfer_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in small_module().state_dict().items()}, str(path))
    user_error(lambda: load_model(path), str(path), "without the architecture", "torch.export")


# --- damaged and missing files --------------------------------------------------------------
@pytest.mark.parametrize("name", ["digits.pt2", "digits.safetensors"])
@pytest.mark.parametrize("keep", [3000, 30000])
def test_truncated_files_are_reported_damaged(tmp_path: Path, name: str, keep: int) -> None:
    path = tmp_path / f"cut_{name}"
    path.write_bytes((DATA / name).read_bytes()[:keep])
    user_error(lambda: load_model(path), str(path), "damaged")


def test_zip_with_corrupt_member_is_reported_damaged(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt2"
    with zipfile.ZipFile(DATA / "digits.pt2") as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("models/model.json"):
                data = data[: len(data) // 2]  # the serialized graph, cut in half
            dst.writestr(info, data)
    user_error(lambda: load_model(path), str(path), "damaged")


def test_unknown_and_empty_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello, not a model")
    user_error(lambda: load_model(junk), str(junk), "not a model format")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    user_error(lambda: load_model(empty), str(empty))
    broken_pickle = tmp_path / "broken.pt"
    broken_pickle.write_bytes(b"\x80\x02garbage")
    user_error(lambda: load_model(broken_pickle), str(broken_pickle), "damaged")


def test_missing_path_and_directory_without_config(tmp_path: Path) -> None:
    user_error(lambda: load_model(tmp_path / "nope.pt2"), "nope.pt2", "no such file")
    user_error(lambda: load_model(tmp_path), str(tmp_path), "without config.json")


# --- bundled secinfer safetensors -----------------------------------------------------------
@pytest.mark.parametrize("name", ["digits", "digits_he"])
def test_bundled_secinfer_safetensors(name: str) -> None:
    path = DATA / f"{name}.safetensors"
    loaded = load_model(path)
    assert loaded.source == "secinfer-safetensors" and loaded.output_name == "logits"
    assert loaded.input_names == ["x"] and loaded.example_inputs[0].shape == (1, 64)
    reference = digits.load_model(path)
    x = digits.load_split(0)[2][:6]
    with torch.no_grad():
        got = loaded.program.module()(*loaded.example_inputs)
        assert max_error(got, reference(*loaded.example_inputs)) < TOL
        assert max_error(run(loaded, (x,)), reference(x)) < TOL
    user_error(lambda: loaded.check_inputs((torch.zeros(2, 63),)), "input x", "shape (2, 63)")
    user_error(lambda: loaded.check_inputs((torch.zeros(2, 64).long(),)), "input x", "int64")


# --- Hugging Face directories ---------------------------------------------------------------
def bert_config() -> T.BertConfig:
    return T.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(VOCAB),
        max_position_embeddings=64,
        num_labels=3,
    )


def gpt2_config() -> T.GPT2Config:
    return T.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip


def vit_config() -> T.ViTConfig:
    return T.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_labels=5,
    )


HF_MODELS = {
    "bert": (T.BertModel, bert_config, "last_hidden_state"),
    "bert_cls": (T.BertForSequenceClassification, bert_config, "logits"),
    "gpt2": (T.GPT2Model, gpt2_config, "last_hidden_state"),
    "gpt2_lm": (T.GPT2LMHeadModel, gpt2_config, "logits"),
    "vit": (T.ViTModel, vit_config, "last_hidden_state"),
    "vit_cls": (T.ViTForImageClassification, vit_config, "logits"),
}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, nn.Module]]:
    """Each HF_MODELS entry saved to a directory, with the original model (eval mode)."""
    made = {}
    for name, (cls, config, _) in HF_MODELS.items():
        torch.manual_seed(0)
        model = cls(config()).eval()
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        made[name] = (path, model)
    bert_path = made["bert_cls"][0]
    (bert_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    T.BertTokenizerFast(vocab_file=str(bert_path / "vocab.txt")).save_pretrained(bert_path)
    return made


@pytest.fixture(scope="module")
def hf_loaded(hf_dirs: dict[str, tuple[Path, nn.Module]]) -> dict[str, LoadedModel]:
    """Each HF directory loaded once."""
    return {name: load_model(path) for name, (path, _) in hf_dirs.items()}


def reference(model: nn.Module, names: list[str], inputs: tuple[torch.Tensor, ...]) -> Any:
    """The original model's first output."""
    with torch.no_grad():
        return model(**dict(zip(names, inputs, strict=True)))[0]


@pytest.mark.parametrize("name", list(HF_MODELS))
def test_hf_directory_matches_original_forward(name: str, hf_dirs, hf_loaded) -> None:
    loaded, model = hf_loaded[name], hf_dirs[name][1]
    assert loaded.source == "huggingface" and loaded.output_name == HF_MODELS[name][2]
    with torch.no_grad():
        got = loaded.program.module()(*loaded.example_inputs)
    assert max_error(got, reference(model, loaded.input_names, loaded.example_inputs)) < TOL
    if name.startswith("vit"):
        assert loaded.input_names == ["pixel_values"]
        assert loaded.example_inputs[0].shape == (1, 3, 16, 16)
        pixels = (torch.rand(3, 3, 16, 16) * 2 - 1,)
        assert max_error(run(loaded, pixels), reference(model, ["pixel_values"], pixels)) < TOL
    else:
        assert loaded.input_names == ["input_ids", "attention_mask"]
        assert [t.dtype for t in loaded.example_inputs] == [torch.int64, torch.int64]
        assert loaded.example_inputs[0].shape == (1, 16)


@pytest.mark.parametrize("name", ["bert_cls", "gpt2_lm"])
def test_hf_text_padding_and_other_shapes(name: str, hf_dirs, hf_loaded) -> None:
    loaded, model = hf_loaded[name], hf_dirs[name][1]
    ids = torch.randint(5, 95, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padded row
    mask[2, 3:] = 0
    inputs = (ids, mask)
    got = run(loaded, inputs)
    assert max_error(got, reference(model, loaded.input_names, inputs)) < TOL
    single = (ids[:1, :1], mask[:1, :1])  # batch 1, one token
    assert max_error(run(loaded, single), reference(model, loaded.input_names, single)) < TOL


def test_gpt2_causal_mask_survives_export(hf_loaded) -> None:
    loaded = hf_loaded["gpt2_lm"]
    ids = torch.randint(0, 100, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 100
    mask = torch.ones_like(ids)
    before, after = run(loaded, (ids, mask)), run(loaded, (changed, mask))
    assert max_error(before[:, :8], after[:, :8]) < TOL  # earlier positions do not see later
    assert max_error(before[:, 8:], after[:, 8:]) > 1e-3


@pytest.mark.parametrize("name", ["bert_cls", "gpt2_lm", "vit"])
def test_hf_export_archive_passes_the_safe_loader(
    name: str, hf_dirs, hf_loaded, tmp_path: Path
) -> None:
    """Real exports (dynamic batch and length, GPT-2's split and causal mask) are inside the
    untrusted-archive loader's allow-lists, and load to the same program."""
    loaded, model = hf_loaded[name], hf_dirs[name][1]
    path = tmp_path / f"{name}.pt2"
    torch.export.save(loaded.program, str(path))
    again = load_model(path)
    assert again.source == "torch.export" and again.input_names == loaded.input_names
    inputs = tuple(torch.cat([t, t]) for t in loaded.example_inputs)  # batch 2
    expected = reference(model, loaded.input_names, inputs)
    assert max_error(run(again, inputs), expected) < TOL


def test_text_encoding_with_tokenizer(hf_dirs, hf_loaded) -> None:
    loaded, model = hf_loaded["bert_cls"], hf_dirs["bert_cls"][1]
    assert loaded.tokenizer is not None
    inputs = encode_text("w1 w2 w3", loaded)
    assert [t.dtype for t in inputs] == [torch.int64, torch.int64]
    assert inputs[0].shape == (1, 5) and inputs[0][0, 0].item() == VOCAB.index("[CLS]")
    assert max_error(run(loaded, inputs), reference(model, loaded.input_names, inputs)) < TOL
    long = encode_text(" ".join(["w7"] * 200), loaded)  # truncated to the model's positions
    assert long[0].shape == (1, 64) and long[0][0, -1].item() == VOCAB.index("[SEP]")
    run(loaded, long)


def test_text_encoding_errors(hf_loaded) -> None:
    user_error(lambda: encode_text("hi", hf_loaded["bert"]), "--text", "tokenizer", "--input")
    user_error(lambda: encode_text("hi", hf_loaded["vit"]), "tokenizer")
    digits_model = load_model(DATA / "digits.pt2")
    user_error(lambda: encode_text("hi", digits_model), "tokenizer", "digits.pt2")


def test_check_inputs_errors_name_the_input(hf_loaded) -> None:
    loaded = hf_loaded["bert_cls"]
    ids, mask = loaded.example_inputs
    user_error(lambda: loaded.check_inputs((ids,)), "2 input(s)", "input_ids, attention_mask")
    user_error(lambda: loaded.check_inputs((ids.float(), mask)), "input input_ids", "float32")
    user_error(lambda: loaded.check_inputs((ids[0], mask)), "input input_ids", "shape (16,)")
    long = torch.zeros(1, 70, dtype=torch.int64)
    user_error(lambda: loaded.check_inputs((long, long)), "input input_ids", "1 to 64")
    user_error(lambda: loaded.check_inputs((ids, mask[:, :8])), "input attention_mask")
    user_error(lambda: loaded.check_inputs((ids, [1, 2])), "input attention_mask", "list")
    vit = hf_loaded["vit"]
    user_error(lambda: vit.check_inputs((torch.zeros(1, 3, 32, 32),)), "pixel_values", "16, 16")


def test_hf_directory_refusals(tmp_path: Path, hf_dirs) -> None:
    bin_only = tmp_path / "bin_only"
    bin_only.mkdir()
    (bin_only / "config.json").write_text(json.dumps(bert_config().to_dict()))
    torch.save({}, bin_only / "pytorch_model.bin")
    user_error(lambda: load_model(bin_only), str(bin_only), "safetensors")
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    user_error(lambda: load_model(bad_json), "config.json", "not valid JSON")
    weights = hf_dirs["bert"][0] / "model.safetensors"
    user_error(lambda: load_model(weights), str(weights), "without the architecture", "directory")


def test_power_softmax_config_without_converted_modules(tmp_path: Path, hf_dirs) -> None:
    source = hf_dirs["bert"][0]
    target = tmp_path / "converted"
    target.mkdir()
    (target / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())
    config = json.loads((source / "config.json").read_text())
    config["_attn_implementation"] = "secinfer_power_softmax"
    (target / "config.json").write_text(json.dumps(config))
    user_error(lambda: load_model(target), str(target), "power-softmax", "torch.export.save")


# --- input files ----------------------------------------------------------------------------
def test_read_input_formats(tmp_path: Path, hf_loaded) -> None:
    bert = hf_loaded["bert_cls"]
    ids, mask = bert.example_inputs
    np.save(tmp_path / "ids.npy", ids.numpy())
    only_ids = read_input(tmp_path / "ids.npy", bert)
    assert torch.equal(only_ids[0], ids) and torch.equal(only_ids[1], torch.ones_like(ids))
    torch.save({"input_ids": ids, "attention_mask": mask}, tmp_path / "named.pt")
    named = read_input(tmp_path / "named.pt", bert)
    assert torch.equal(named[0], ids) and torch.equal(named[1], mask)
    torch.save((ids, mask), tmp_path / "pair.pt")
    pair = read_input(tmp_path / "pair.pt", bert)
    assert torch.equal(pair[0], ids) and torch.equal(pair[1], mask)
    vit = hf_loaded["vit"]
    torch.save(vit.example_inputs[0], tmp_path / "pixels.pt")
    assert torch.equal(read_input(tmp_path / "pixels.pt", vit)[0], vit.example_inputs[0])


def test_read_input_errors(tmp_path: Path, hf_loaded) -> None:
    bert = hf_loaded["bert_cls"]
    user_error(lambda: read_input(tmp_path / "none.npy", bert), "none.npy", "no such file")
    (tmp_path / "x.txt").write_text("1 2 3")
    user_error(lambda: read_input(tmp_path / "x.txt", bert), "x.txt", ".npy or .pt")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    user_error(lambda: read_input(tmp_path / "objects.npy", bert), "objects.npy", "not a plain")
    torch.save(small_module(), tmp_path / "module.pt")
    user_error(lambda: read_input(tmp_path / "module.pt", bert), "module.pt", "loads safely")
    torch.save({"pixels": torch.zeros(1)}, tmp_path / "wrong_key.pt")
    user_error(lambda: read_input(tmp_path / "wrong_key.pt", bert), "wrong_key.pt", "input_ids")
    torch.save([torch.zeros(1), 3], tmp_path / "mixed.pt")
    user_error(lambda: read_input(tmp_path / "mixed.pt", bert), "mixed.pt", "item 1")
    np.save(tmp_path / "float64.npy", np.zeros((2, 64)))
    digits_model = load_model(DATA / "digits.pt2")
    inputs = read_input(tmp_path / "float64.npy", digits_model)
    user_error(lambda: digits_model.check_inputs(inputs), "input x", "float64", "astype")

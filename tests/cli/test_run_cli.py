"""`secinfer run` and `secinfer inspect` as a user runs them: formats, outputs, errors.

Runs that succeed go through the installed console script (a process each); `inspect`
and the user errors call the same command in this process (click's CliRunner, tracebacks
shown as a user would see them), which saves an interpreter start per call and lets
`inspect` reuse the fits it made for the first model.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from helpers.cli import assert_user_error, secinfer_here

ROOT = Path(__file__).parents[2]
DIGITS = ROOT / "secinfer" / "data" / "digits.safetensors"
DIGITS_HE = ROOT / "secinfer" / "data" / "digits_he.safetensors"
DIGITS_PT2 = ROOT / "secinfer" / "data" / "digits.pt2"
_BESIDE = Path(sys.executable).with_name("secinfer")


def secinfer(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(_BESIDE), *args], capture_output=True, text=True, timeout=600, check=False, cwd=cwd
    )


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = T.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=120,
        num_labels=3,
    )
    path = tmp_path_factory.mktemp("bert")
    T.BertForSequenceClassification(cfg).save_pretrained(path)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(115)]]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    T.BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    return path


def test_run_digits_writes_output_report_and_plot(tmp_path) -> None:
    sample = tmp_path / "x.npy"
    from secinfer.zoo.digits import load_split

    np.save(sample, load_split(0)[2][:20].numpy())
    done = secinfer(
        "run",
        str(DIGITS),
        "-b",
        "approx",
        "--input",
        str(sample),
        "--output",
        str(tmp_path / "y.npy"),
        "--report",
        str(tmp_path / "r.json"),
        "--plot",
        str(tmp_path / "p.png"),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    for key in (
        "backend",
        "model",
        "seconds",
        "output_shape",
        "reference",
        "max_abs_error",
        "cosine",
        "argmax_agreement",
        "out_of_range",
        "comm",
        "layers",
    ):
        assert key in report
    assert report["output_shape"] == [20, 10] and report["cosine"] >= 0.999
    assert report["comm"] == {"bytes_sent": {"model_owner": 0, "data_owner": 0}, "rounds": 0}
    assert np.load(tmp_path / "y.npy").shape == (20, 10)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert {layer["name"] for layer in report["layers"]} >= {"blocks.0", "blocks.1"}


def test_run_hf_directory_with_text(bert_dir) -> None:
    done = secinfer("run", str(bert_dir), "--text", "w1 w2 w3", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["output_shape"] == [1, 5, 3] or report["output_shape"][-1] == 3
    assert report["cosine"] >= 0.999 and report["argmax_agreement"] == 1.0


@pytest.mark.parametrize("which", ["digits", pytest.param("bert", marks=pytest.mark.slow)])
def test_inspect_demo_and_bert(which: str, request: pytest.FixtureRequest) -> None:
    """The text view on both; the JSON view's figures on digits (the bert directory,
    exported on the fly, is in the slow suite)."""
    model = DIGITS_PT2 if which == "digits" else request.getfixturevalue("bert_dir")
    done = secinfer_here("inspect", str(model))
    assert done.returncode == 0, done.stderr
    assert "aten.linear" in done.stdout and "HE multiplicative depth estimate" in done.stdout
    assert "approx" in done.stdout
    if which == "digits":
        info = json.loads(secinfer_here("inspect", str(DIGITS_PT2), "--json").stdout)
        assert info["he_depth_estimate"]["depth"] > 0
        assert info["parameters"] == 18154


def test_bad_inputs_are_one_line_errors(tmp_path, bert_dir) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    pickled = tmp_path / "module.pt"
    torch.save(module, pickled)
    state = tmp_path / "state.pt"
    torch.save(module.state_dict(), state)
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(DIGITS_PT2.read_bytes()[:5000])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(pickle.dumps([1, 2, 3])[:2] + b"garbage")
    wrong_shape = tmp_path / "wrong.npy"
    np.save(wrong_shape, np.zeros((2, 63), dtype=np.float32))
    wrong_dtype = tmp_path / "wrong_dtype.npy"
    np.save(wrong_dtype, np.zeros((2, 64), dtype=np.int64))

    assert_user_error(secinfer_here("run", str(tmp_path / "missing.pt2")), "no such file")
    assert_user_error(secinfer_here("run", str(pickled)), "--trust-model")
    assert_user_error(secinfer_here("run", str(state)), "without the architecture")
    assert_user_error(secinfer_here("run", str(corrupt)), "damaged")
    assert_user_error(secinfer_here("run", str(junk)), "junk.bin")
    assert_user_error(
        secinfer_here("run", str(DIGITS), "--input", str(wrong_shape)), "shape (2, 63)"
    )
    assert_user_error(secinfer_here("run", str(DIGITS), "--input", str(wrong_dtype)), "dtype int64")
    assert_user_error(secinfer_here("run", str(DIGITS), "--text", "hello"), "tokenizer")
    # an op with no CKKS kernel (log_softmax) is refused before any party starts, naming
    # the conversion (the unconverted digits model itself runs under he now)
    no_kernel = tmp_path / "log_softmax.pt2"
    head = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LogSoftmax(-1)).eval()
    torch.export.save(torch.export.export(head, (torch.zeros(2, 4),)), no_kernel)
    assert_user_error(secinfer_here("run", str(no_kernel), "-b", "he"), "approximations.convert")
    assert_user_error(
        secinfer_here("run", str(DIGITS), "--output", str(tmp_path / "y.txt")), ".npy"
    )
    assert not (tmp_path / "y.txt").exists()


def test_pickled_module_runs_with_trust_flag(tmp_path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    pickled = tmp_path / "module.pt"
    torch.save(module, pickled)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
    done = secinfer(
        "run",
        str(pickled),
        "--trust-model",
        "--input",
        str(x),
        "-b",
        "plain",
        "--output",
        str(tmp_path / "y.npy"),
    )
    assert done.returncode == 0, done.stderr
    expected = module(torch.from_numpy(np.load(x))).detach().numpy()
    assert np.abs(np.load(tmp_path / "y.npy") - expected).max() < 1e-6


def test_torchscript_needs_input_then_runs(tmp_path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU()).eval()
    scripted = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(module), scripted)
    assert_user_error(secinfer_here("run", str(scripted)), "--trust-model")
    assert_user_error(secinfer_here("run", str(scripted), "--trust-model"), "--input")
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 4), dtype=np.float32))
    done = secinfer(
        "run", str(scripted), "--input", str(x), "-b", "approx", "--json", "--trust-model"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cosine"] >= 0.999


def test_unsupported_op_exits_2_naming_op_and_module(tmp_path) -> None:
    class Spectral(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft(self.proj(x)).real

    path = tmp_path / "spectral.pt2"
    torch.export.save(torch.export.export(Spectral(), (torch.randn(2, 8),)), path)
    assert_user_error(secinfer_here("run", str(path)), "aten._fft")

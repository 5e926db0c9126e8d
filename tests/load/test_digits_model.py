"""The bundled digits models: they load safely, keep their accuracy, and export."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from approximations import PolyGELU, PolyLayerNorm, PowerSoftmax
from secinfer.zoo.demo import HE_FRIENDLY, PLAIN
from secinfer.zoo.digits import (
    DigitsTransformer,
    ModelFileError,
    accuracy,
    load_model,
    load_split,
    predict,
    save_model,
)


@pytest.fixture(scope="module")
def split() -> tuple[torch.Tensor, ...]:
    return load_split(seed=0)


def test_plain_model_accuracy(split) -> None:
    _, _, test_x, test_y = split
    assert accuracy(load_model(PLAIN), test_x, test_y) >= 0.95


def test_he_friendly_model_within_two_points(split) -> None:
    _, _, test_x, test_y = split
    plain = accuracy(load_model(PLAIN), test_x, test_y)
    friendly_model = load_model(HE_FRIENDLY)
    friendly = accuracy(friendly_model, test_x, test_y)
    assert friendly >= plain - 0.02
    kinds = {type(m) for m in friendly_model.modules()}
    assert {PolyGELU, PowerSoftmax, PolyLayerNorm} <= kinds
    assert not kinds & {torch.nn.GELU, torch.nn.Softmax, torch.nn.LayerNorm}


@pytest.mark.parametrize("path", [PLAIN, HE_FRIENDLY])
def test_exported_programs_reproduce_the_modules(path, split) -> None:
    _, _, test_x, _ = split
    program = torch.export.load(str(path.with_suffix(".pt2")))
    with torch.no_grad():
        exported = program.module()(test_x)
    assert torch.allclose(exported, predict(load_model(path), test_x), atol=1e-5, rtol=0)


def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(1)
    model = DigitsTransformer().eval()
    saved = save_model(model, tmp_path / "m")
    again = load_model(saved)
    x = torch.rand(3, 64)
    assert torch.equal(predict(model, x), predict(again, x))


def test_loader_refuses_pickles_and_foreign_files(tmp_path) -> None:
    pickled = tmp_path / "model.safetensors"
    pickled.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ModelFileError, match=r"not a safetensors file.*pickle"):
        load_model(pickled)
    torch_saved = tmp_path / "state.safetensors"
    torch.save(DigitsTransformer().state_dict(), torch_saved)
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        load_model(torch_saved)
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "missing.safetensors")


def test_demo_runs_and_says_what_it_is() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "secinfer.zoo.demo"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "HE-friendly model accuracy" in done.stdout
    assert "plaintext only" in done.stdout


def test_two_party_demo_agrees_with_plaintext() -> None:
    """What `make demo` runs: the three example scripts as separate processes."""
    script = Path(__file__).resolve().parents[2] / "examples" / "two_party" / "run_demo.py"
    done = subprocess.run(
        [sys.executable, str(script), "--images", "5"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "secure predictions equal plaintext's: 1.0000 (5/5)" in done.stdout
    assert "communication: model owner sent" in done.stdout


@pytest.mark.slow
def test_training_example_end_to_end(tmp_path) -> None:
    """examples/train_he_friendly.py trains, converts, fine-tunes and saves (about 30 s on an
    idle 2-core machine, minutes on a busy one: `make test-all` only)."""
    done = subprocess.run(
        [sys.executable, "examples/train_he_friendly.py", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plain = accuracy(load_model(tmp_path / "digits.safetensors"), *load_split(0)[2:])
    friendly = accuracy(load_model(tmp_path / "digits_he.safetensors"), *load_split(0)[2:])
    assert plain >= 0.95 and friendly >= plain - 0.02
    assert "converted, after fine-tuning" in done.stdout


@pytest.mark.parametrize("out", ["secinfer/data", "secinfer/data/sub", "secinfer/../secinfer/data"])
def test_the_example_never_writes_into_the_bundled_models_unasked(out: str) -> None:
    """The training example refuses the package's bundled-model folder (exit 2, one line,
    nothing written); only `make bundled-models` passes --update-bundled."""
    data = Path("secinfer/data")
    before = {f.name: f.stat().st_mtime_ns for f in data.iterdir()}
    done = subprocess.run(
        [sys.executable, "examples/train_he_friendly.py", "--out", out, "--epochs", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "bundled-model folder" in done.stderr and "make bundled-models" in done.stderr
    assert "Traceback" not in done.stderr
    assert {f.name: f.stat().st_mtime_ns for f in data.iterdir()} == before
    assert "--update-bundled" in Path("Makefile").read_text()


def test_bundled_rsqrt_configuration_is_what_the_code_picks() -> None:
    """The HE-friendly LayerNorm's rsqrt is chosen from its interval by a search; if that
    search changes, the bundled model silently changes too: retrain it then."""
    import json

    from approximations.functions import rsqrt_approximation

    record = json.loads(HE_FRIENDLY.with_suffix(".json").read_text())
    interval = tuple(record["conversion"]["layernorm_interval"])
    picked = rsqrt_approximation("poly", interval)
    recorded = record["info"]["layernorm_rsqrt"]
    assert picked.initial_degree == recorded["initial_degree"], "retrain: rsqrt search changed"
    assert picked.iterations == recorded["iterations"], "retrain: rsqrt search changed"
    assert picked.max_error <= 1e-3


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--landmarks"], "--landmarks: expected one argument"),
        (["--landmarks", "3"], "--landmarks 3: must divide"),
        (["--iterations", "0"], "--iterations and --epochs must be at least 1"),
    ],
)
def test_the_soft_example_refuses_bad_options_in_one_line(tmp_path, extra, needle) -> None:
    """examples/train_soft_attention.py: a SOFT option without its value, or one the model
    cannot take, is one `error:` line and exit 2, before any training."""
    from helpers.cli import assert_user_error

    done = subprocess.run(
        [sys.executable, "examples/train_soft_attention.py", "--out", str(tmp_path), *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert_user_error(done, needle)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_the_soft_example_fine_tunes_within_two_points_and_saves(tmp_path) -> None:
    """SOFT on the digits model (30 epochs of distillation): within 2 points of softmax
    attention, saved in the zoo's format, reloaded to the same accuracy."""
    done = subprocess.run(
        [sys.executable, "examples/train_soft_attention.py", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    test = load_split(0)[2:]
    soft = accuracy(load_model(tmp_path / "digits_soft.safetensors"), *test)
    softmax = accuracy(load_model(Path("secinfer/data/digits.safetensors")), *test)
    assert soft >= softmax - 0.02
    assert f"SOFT {soft:.4f}" in done.stdout

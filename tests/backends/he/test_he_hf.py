"""Hugging Face directories (BERT, GPT-2 with its causal mask, ViT) under `--backend he`.

Tiny randomly initialised models (1 layer, hidden 16, 2 heads), saved with
`save_pretrained` and loaded as `secinfer run DIR` loads them (`load_huggingface`); text
inputs are a batch of two sequences of 6 tokens, the second padded after 4 (its keys
masked by finfo.min in the scores; GPT-2 adds its causal mask the same way), images a
batch of two 8x8 pictures in 4x4 patches (a class token concatenated in front).

- `secinfer inspect`'s he coverage: no op is missing (attention masks are sent in the
  clear, so where/index/bitwise_and on them are plain computations), and the unconverted
  graphs with their structural ops on real CKKS, the nonlinear ops stood in by an ORACLE
  that decrypts, applies the exact op and re-encrypts (test-only: it needs the secret key;
  it isolates the structural ops from the nonlinear kernels' approximation error, which
  the CLI case below includes): masked scores reach the softmax as s - 200, GPT-2's
  split of q, k, v and ViT's patch convolution and class token run as the he kernels.
  Bound: 1e-4 of max(1, |want|) on the last hidden state (CKKS noise of a few product
  levels, about 1e-6 measured, and the oracle's fresh encryption).
- Converted with `approximations.convert(gelu='quad', softmax='power', layernorm='poly')`,
  through a real client and server on loopback sockets (`helpers.he.encrypted_run`, the
  image unfolded by the client): cosine >= 0.999 and max error <= 1e-3 against the
  plaintext run of the same converted graph (slow suite).
- The unconverted directories through the CLI, `secinfer run DIR --backend he`: cosine
  >= 0.999 against plaintext (slow suite).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers as T

from protocols.he.tensor import HeTensor
from secinfer.backends.he import kernels as he_kernels
from secinfer.core.inspection import coverage
from secinfer.core.registry import REGISTRY
from secinfer.load.huggingface import load_huggingface

ROOT = Path(__file__).resolve().parents[3]
NONLINEAR_OPS = {"aten.layer_norm", "aten.softmax", "aten.gelu", "aten.tanh"}


def bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.BertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=50,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    return T.BertModel(config).eval()


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.GPT2Config(
        n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32, attn_implementation="eager"
    )
    return T.GPT2Model(config).eval()


def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.ViTConfig(
        image_size=8,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        attn_implementation="eager",
    )
    return T.ViTModel(config).eval()


BUILDERS = {"bert": bert, "gpt2": gpt2, "vit": vit}


def text() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return ids, mask


def pixels() -> tuple[torch.Tensor]:
    return (torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1,)


def inputs_of(name: str) -> tuple[torch.Tensor, ...]:
    return pixels() if name == "vit" else text()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-he")
    paths = {}
    for name, build in BUILDERS.items():
        paths[name] = root / name
        build().save_pretrained(paths[name])
    ids, mask = text()
    torch.save({"input_ids": ids, "attention_mask": mask}, root / "text.pt")
    torch.save(pixels()[0], root / "pixels.pt")
    paths["text"], paths["pixels"] = root / "text.pt", root / "pixels.pt"
    return paths


def graph_and_plan(path: Path, name: str) -> tuple[Any, Any, tuple[torch.Tensor, ...]]:
    from secinfer.core.prepare import prepare

    loaded = load_huggingface(path)
    xs = inputs_of(name)
    program = loaded.program_for(xs)
    graph, plan = prepare(program, "he", loaded.calibration_samples(), None)
    return graph, plan, xs


# --- unconverted graphs, nonlinear ops by an oracle --------------------------------------------
@contextmanager
def oracle_nonlinear(runner: Any) -> Iterator[None]:
    """TEST ONLY: the he kernels of the nonlinear ops replaced by the client's exact op on
    decrypted values, re-encrypted in the input's layout (module docstring)."""
    from secinfer.backends.he.kernels import dispatch

    def oracle(call: Any) -> Any:
        x = call.args[0]
        plain = torch.from_numpy(runner.codec.decrypt(x.grid, x.layout))
        out = call.target(plain, *call.args[1:], **call.kwargs).double()
        grid = runner.codec.encrypt(out.numpy(), x.layout)
        return HeTensor(runner.engine, x.layout, grid, clean=True, refresher=runner.refresher)

    saved = {op: REGISTRY[op].kernels["he"] for op in NONLINEAR_OPS}
    functions = dict(he_kernels.HE_FUNCTIONS)
    try:
        for op in NONLINEAR_OPS:
            REGISTRY[op].kernels["he"] = dispatch(oracle)
        for function in ("layer_norm", "softmax", "gelu", "tanh"):
            he_kernels.HE_FUNCTIONS[function] = None
        yield
    finally:
        for op, kernel in saved.items():
            REGISTRY[op].kernels["he"] = kernel
        he_kernels.HE_FUNCTIONS.clear()
        he_kernels.HE_FUNCTIONS.update(functions)


@pytest.mark.parametrize(
    "name",
    [
        "bert",  # GPT-2's split and ViT's patches are in test_he_structural.py by default
        pytest.param("gpt2", marks=pytest.mark.slow),
        pytest.param("vit", marks=pytest.mark.slow),
    ],
)
def test_structural_ops_of_unconverted_models_on_ckks(hf_dirs, name: str) -> None:
    """Also what `secinfer inspect` reports for the graph under he."""
    from conformance.he_session import HeRunner

    from secinfer.core.execute import Executor

    graph, plan, xs = graph_and_plan(hf_dirs[name], name)
    missing = set(coverage(graph)["he"]["missing_ops"])
    assert not missing, missing  # every op has an he kernel, nonlinear ones included
    ops = {node.op for node in graph.calls}
    structural = {"bert": "aten.where", "gpt2": "aten.split_with_sizes", "vit": "aten.cat"}
    assert structural[name] in ops
    runner = HeRunner()
    with oracle_nonlinear(runner):
        got = runner.run(graph, plan, xs)
    want = Executor(graph, "plain").run(xs).outputs[0].double().numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


# --- converted models, real client and server ---------------------------------------------------
def _variance_range(model: torch.nn.Module, xs: tuple[torch.Tensor, ...], name: str):
    """var + eps seen by the LayerNorms on the inputs and a second draw, widened 2x."""
    seen: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].var(-1, unbiased=False) + module.eps)

    handles = [
        m.register_forward_pre_hook(hook)
        for m in model.modules()
        if isinstance(m, torch.nn.LayerNorm)
    ]
    with torch.no_grad():
        _call(model, name, xs)
        _call(model, name, tuple(x.flip(0) for x in xs))
    for handle in handles:
        handle.remove()
    values = torch.cat([v.reshape(-1) for v in seen])
    return float(values.min()) / 2, float(values.max()) * 2


def _call(model: torch.nn.Module, name: str, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if name == "vit":
        return model(pixel_values=xs[0])[0]
    return model(input_ids=xs[0], attention_mask=xs[1])[0]


class _Wrapped(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, name: str) -> None:
        super().__init__()
        self.model, self.name = model, name

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return _call(self.model, self.name, xs)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_converted_models_run_encrypted(name: str) -> None:
    from helpers.he import encrypted_run

    import approximations
    from secinfer.core.prepare import prepare

    model = BUILDERS[name]()
    xs = inputs_of(name)
    options = {"p": 4, "normalizer": "mean", "eps": 1e-3, "scale": False}
    # the LayerNorms' variances as the converted model has them (its GELU and softmax)
    exact_norms, _ = approximations.convert(
        model, gelu="quad", softmax="power", softmax_options=options
    )
    converted, _ = approximations.convert(
        model,
        gelu="quad",
        softmax="power",
        layernorm="poly",
        layernorm_interval=_variance_range(exact_norms, xs, name),
        softmax_options=options,
    )
    program = torch.export.export(_Wrapped(converted, name).eval(), xs)
    graph, plan = prepare(program, "he", [xs, tuple(x.flip(0) for x in xs)], None)
    y, expected, _ = encrypted_run(graph, plan, xs, timeout=600)
    cosine = float((y * expected).sum() / np.linalg.norm(y) / np.linalg.norm(expected))
    assert cosine >= 0.999 and np.abs(y - expected).max() <= 1e-3


# --- unconverted directories through the CLI -----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_hugging_face_directories_run_under_he(hf_dirs, tmp_path: Path, name: str) -> None:
    report = tmp_path / "r.json"
    data = hf_dirs["pixels" if name == "vit" else "text"]
    done = subprocess.run(
        [sys.executable, "-m", "secinfer.cli", "run", str(hf_dirs[name]), "--backend", "he",
         "--input", str(data), "--report", str(report), "--timeout", "600"],
        capture_output=True, text=True, timeout=3600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(report.read_text())
    assert result["output_shape"][0] == 2
    assert result["cosine"] >= 0.999, result["cosine"]

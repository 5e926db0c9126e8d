"""End-to-end HE runs: server and client for real (TenSEAL CKKS, sockets), against plaintext.

- `secinfer run --backend he` on the bundled HE-friendly digits model: two processes, the
  decrypted logits within 1e-3 of the plaintext run of the same converted graph (measured
  1.2e-5), the report's depth, refresh, count, byte and latency fields.
- A small randomly initialised BERT converted with `approximations.convert` (quad GELU,
  power-softmax, polynomial LayerNorm) under `he` with one-hot token inputs: cosine >= 0.99
  against its plaintext self (measured 1 - 1e-14, max error 2e-6).
- What the server holds: a public context, no secret key; it cannot decrypt.
- Bad input: no refresh allowed, an op without an HE kernel, a truncated ciphertext, ciphertexts
  under another context, a wrong input shape: one clear line each, the server ends cleanly.

The digits model through the CLI, the public-embedding mode and the 100-image digits
check (`test_he_slow.py`) are in the slow suite. The refusals call `secinfer run` in this
process (`helpers.cli.secinfer_here`); server and client are processes all the same.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal as ts
import torch
from helpers.cli import secinfer_here
from helpers.he import Normalise, encrypted_run, start_server

from protocols.he import messages as M
from protocols.he.galois import public_context_with_steps
from protocols.he.params import CkksParams, make_context
from protocols.he.rotation import vector_proto
from secinfer.backends.he.channel import GREETING
from secinfer.core.prepare import prepare

ROOT = Path(__file__).resolve().parents[3]
DIGITS_HE = ROOT / "secinfer" / "data" / "digits_he.pt2"


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secinfer.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


# --- the digits model through the CLI ------------------------------------------------------
@pytest.mark.slow
def test_digits_he_runs_encrypted_and_matches_plaintext(tmp_path: Path) -> None:
    report_path, output_path = tmp_path / "r.json", tmp_path / "y.npy"
    done = cli(
        "run", str(DIGITS_HE), "--backend", "he", "--report", str(report_path),
        "--output", str(output_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    assert report["backend"] == "he"
    assert report["max_abs_error"] < 1e-3
    assert report["cosine"] > 0.999999
    he = report["he"]
    depth = he["depth"]
    assert (
        depth["depth_per_context"] + depth["reserved_levels"]
        == len(he["params"]["coeff_mod_bit_sizes"]) - 2
    )
    assert depth["refreshes"] > 0
    assert depth["levels_used"] == depth["depth_per_context"] * (depth["refreshes"] + 1)
    assert he["hiding"]["hiding_bits"] >= 40
    assert he["counts"]["ct_ct_mults"] > 0 and he["counts"]["rotations"] > 0
    assert he["bytes"]["server_to_client"] > 0 and he["bytes"]["client_to_server"] > 0
    # only the Galois keys the layout needs: far below TenSEAL's 35 MB of all keys
    assert he["bytes"]["public_context"] < 12e6
    for group in ("matmul", "attention", "softmax", "GELU", "LayerNorm", "refresh"):
        assert group in he["latency"], group
    assert "| attention |" in done.stdout and "refreshes" in done.stdout
    assert np.load(output_path).shape == tuple(report["output_shape"])


def test_run_backend_he_on_a_small_model_through_the_cli(tmp_path: Path) -> None:
    """The whole CLI path (two processes, report, output file) on a small exported model;
    the digits model's run is in the slow suite."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    path = tmp_path / "small.pt2"
    torch.export.save(torch.export.export(Square().eval(), (x,)), path)
    np.save(tmp_path / "x.npy", x.numpy())
    report_path, output_path = tmp_path / "r.json", tmp_path / "y.npy"
    done = cli(
        "run", str(path), "--backend", "he", "--input", str(tmp_path / "x.npy"),
        "--report", str(report_path), "--output", str(output_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    assert report["max_abs_error"] < 1e-4 and report["he"]["bytes"]["client_to_server"] > 0
    assert "why:" in done.stdout and "| matmul |" in done.stdout
    # the default hiding: 40 bits at least, for a stated bound, and the candidates priced
    hiding = report["he"]["hiding"]
    assert hiding["hiding_bits"] >= 40 and hiding["asked_bits"] == 40
    assert hiding["value_bound"]["samples"] >= 1 and "calibration samples" in hiding["explained"]
    assert report["he"]["params_choice"]["candidates"] and "hiding: " in done.stdout
    assert report["estimates"]["wan"] > report["estimates"]["lan"] > report["seconds"]
    assert f"({report['he']['round_trips']} round trips)" in done.stdout
    assert np.load(output_path).shape == (2, 3)
    # 40 bits need coefficient-mode refreshes, which re-lay out too: the packing asked runs
    packing = report["he"]["packing"]
    assert packing["asked"] == packing["policy"] == "auto" and "why" not in packing
    assert sum(packing["products"].values()) >= 1 and "packing auto: " in done.stdout


def test_without_refresh_the_error_states_depth_needed_and_available(tmp_path: Path) -> None:
    """`secinfer run` in this process; refused before any party starts. A model needing
    more levels than the deepest 128-bit chain offers (19 at N = 32768): twelve squarings
    after the linear layer (a model of a few levels now runs without refresh, on a chain
    deep enough: `test_he_choice.py`)."""
    path = tmp_path / "deep.pt2"
    torch.export.save(torch.export.export(Deeper().eval(), (torch.randn(2, 3, 8),)), path)
    done = secinfer_here("run", str(path), "--backend", "he", "--no-refresh")
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert "levels" in line and "offers 19" in line and "Traceback" not in done.stderr


class LogSoftmax(torch.nn.Module):
    """log_softmax has no CKKS kernel (LayerNorm, softmax and GELU have since issue 15: the
    bundled unconverted digits model now runs under he)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x * x, -1)


def test_a_model_with_ops_ckks_cannot_run_is_refused_with_the_conversion_to_apply(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log_softmax.pt2"
    torch.export.save(torch.export.export(LogSoftmax(), (torch.randn(2, 3, 8),)), path)
    done = secinfer_here("run", str(path), "--backend", "he")
    assert done.returncode == 2
    assert "has no he kernel" in done.stderr and "approximations.convert" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_input_of_the_wrong_shape_is_refused_by_the_server(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 63), dtype=np.float32))
    done = secinfer_here("run", str(DIGITS_HE), "--backend", "he", "--input", str(path))
    assert done.returncode == 2
    assert "63" in done.stderr and "Traceback" not in done.stderr


# --- in-process sessions (server thread, real sockets) ----------------------------------------
class Square(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return (y * y).mean(-1)


class Deep(Square):
    """Three squarings after the linear layer: deeper than one context's 2 levels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        for _ in range(3):
            y = y * y
        return y.mean(-1)


class Deeper(Square):
    """Twenty squarings after the linear layer, scaled to stay small: deeper than any chain."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x) * 0.1
        for _ in range(20):
            y = y * y
        return y.mean(-1)


@pytest.fixture(scope="module")
def small() -> tuple[Any, Any, torch.Tensor]:
    x = torch.randn(2, 3, 8)
    program = torch.export.export(Square().eval(), (x,))
    graph, plan = prepare(program, "he", [(x,)], None)
    return graph, plan, x


def test_the_server_holds_a_public_context_that_cannot_decrypt(small, monkeypatch) -> None:
    graph, plan, x = small
    received: list[ts.Context] = []
    real = M.recv_context_with_digest

    def spy(*args: Any, **kwargs: Any) -> Any:  # the real function runs; we keep its result
        context, digest = real(*args, **kwargs)
        received.append(context)
        return context, digest

    monkeypatch.setattr(M, "recv_context_with_digest", spy)
    y, expected, _ = encrypted_run(graph, plan, (x,), timeout=30)
    assert np.abs(y - expected).max() < 1e-4
    (context,) = received
    assert not context.is_private()
    with pytest.raises(ValueError):
        context.secret_key()
    with pytest.raises(ValueError):
        ts.ckks_vector(context, [1.0, 2.0]).decrypt()


def _handshake(port: int, x: torch.Tensor) -> tuple[socket.socket, dict[str, Any], Any, bytes]:
    """A client that follows the protocol up to the encrypted input (real messages)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    M.send_json(sock, GREETING)
    M.recv_json(sock, timeout=30, max_bytes=1 << 20)
    message = {"kind": "shapes", "shapes": [list(x.shape)], "dtypes": ["float"]}
    M.send_json(sock, message)
    layouts = M.recv_json(sock, timeout=30, max_bytes=1 << 20)
    context = make_context(CkksParams.from_dict(layouts["params"]), galois_steps=[])
    public = public_context_with_steps(context, layouts["galois_steps"])
    digest = M.send_context_bytes(sock, public)
    M.send_json(sock, M.handshake_message(digest))
    return sock, layouts, context, digest


def _server_error(outcome: dict[str, Any], thread: threading.Thread) -> str:
    thread.join(30)
    assert not thread.is_alive()
    assert "error" in outcome
    return str(outcome["error"])


def test_a_truncated_ciphertext_is_refused_and_the_client_told(small) -> None:
    graph, plan, x = small
    port, outcome, thread = start_server(graph, plan)
    sock, _layouts, context, digest = _handshake(port, x)
    good = ts.ckks_vector(context, [0.0] * 8).serialize()
    truncated = good[: len(good) // 2]
    M.send_message(sock, M.MessageKind.CIPHERTEXTS, M.encode_serialized([truncated] * 8, digest))
    with pytest.raises(M.PeerError, match="malformed"):
        M.recv_json(sock, timeout=30, max_bytes=1 << 20)
    assert "malformed" in _server_error(outcome, thread)
    sock.close()


def test_ciphertexts_under_another_context_are_refused(small) -> None:
    graph, plan, x = small
    port, outcome, thread = start_server(graph, plan)
    sock, layouts, _, _ = _handshake(port, x)
    other = make_context(CkksParams.from_dict(layouts["params"]), galois_steps=[])
    foreign = ts.ckks_vector(other, [0.0] * 8)
    other_digest = M.context_digest(other.serialize(save_secret_key=False))
    raw = vector_proto([_raw(foreign)], [4096], 2.0**40)
    M.send_message(sock, M.MessageKind.CIPHERTEXTS, M.encode_serialized([raw] * 8, other_digest))
    with pytest.raises(M.PeerError, match="another context"):
        M.recv_json(sock, timeout=30, max_bytes=1 << 20)
    assert "another context" in _server_error(outcome, thread)
    sock.close()


def _raw(vector: ts.CKKSVector) -> bytes:
    from protocols.he.rotation import ciphertext_bytes

    return ciphertext_bytes(vector.ciphertext()[0])


# --- a converted BERT ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("layers", "public_embedding"),
    [
        (1, False),
        pytest.param(2, False, marks=pytest.mark.slow),
        pytest.param(1, True, marks=pytest.mark.slow),
    ],
    ids=["one-hot", "one-hot-two-layers", "public-table"],
)
def test_a_converted_random_bert_runs_encrypted_with_cosine_above_0_99(
    layers: int, public_embedding: bool
) -> None:
    """Token ids encrypted one-hot (the server multiplies by its table), or embedded by the
    client with the table the server declared public (one layer: the embedding is what
    differs)."""
    import transformers

    import approximations

    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
    )
    bert = transformers.BertModel(config).eval()
    bert.config._attn_implementation = "eager"
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    variance = _layer_norm_variance_range(bert, ids, mask)
    converted, _ = approximations.convert(
        bert,
        gelu="quad",
        softmax="power",
        layernorm="poly",
        layernorm_interval=variance,
        softmax_options={"p": 4, "normalizer": "mean", "eps": 1e-3, "scale": False},
    )

    class Hidden(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=ids, attention_mask=mask).last_hidden_state

    program = torch.export.export(Hidden(converted).eval(), (ids, mask))
    samples = [(torch.randint(0, 100, (2, 8)), mask) for _ in range(4)]
    graph, plan = prepare(program, "he", samples, None)
    y, expected, outcome = encrypted_run(
        graph, plan, (ids, mask), public_embedding=public_embedding
    )
    cosine = float((y * expected).sum() / np.linalg.norm(y) / np.linalg.norm(expected))
    assert cosine >= 0.99
    assert np.abs(y - expected).max() < 1e-2
    assert outcome["record"]["refreshes"] > 0


def _layer_norm_variance_range(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor):
    """The range of var + eps seen by the LayerNorms on random token batches, widened 2x."""
    seen: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].var(-1, unbiased=False) + module.eps)

    handles = [
        m.register_forward_pre_hook(hook)
        for m in model.modules()
        if isinstance(m, torch.nn.LayerNorm)
    ]
    with torch.no_grad():
        for _ in range(4):
            model(input_ids=torch.randint(0, 100, ids.shape), attention_mask=mask)
    for handle in handles:
        handle.remove()
    values = torch.cat([v.reshape(-1) for v in seen])
    return (float(values.min()) / 2, float(values.max()) * 2)


def test_inverse_square_root_and_gelu_kernels_on_ciphertexts() -> None:
    """The he kernels of aten.rsqrt (Newton from a polynomial guess on the calibrated
    interval) and aten.gelu (one minimax polynomial), against plaintext: within 1e-2."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8)
    program = torch.export.export(Normalise().eval(), (x,))
    graph, plan = prepare(program, "he", [(torch.randn(2, 3, 8),) for _ in range(4)], None)
    y, expected, _ = encrypted_run(graph, plan, (x,))
    assert np.abs(y - expected).max() < 1e-2

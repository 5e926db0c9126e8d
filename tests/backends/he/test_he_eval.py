"""`secinfer eval -b he`: the server sums encrypted losses, the client decrypts the totals.

Default suite, on a small exported classifier (8 features, 4 classes, a square activation)
with 10 labelled rows in batches of 4 (the last one padded and masked):
- the CLI end to end (two processes): every loss within 1e-2 relative of plaintext
  (cross-entropy 2e-2), accuracy identical, the report's HE fields;
- in process (server thread, real sockets): with the aggregate revealed to the model owner,
  every JSON message the server receives is recorded: none carries a per-example value
  (only row counts and the final aggregate), and every ciphertext it receives is one it
  cannot decrypt (tested in `test_he_run`);
- bad input: a label out of range, settings the client did not agree to, a data set of
  the wrong input shape: one line each, both sides stop.
Slow suite: the bundled HE-friendly digits model on its whole test split (360 images).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from approximations import losses as L
from protocols.he import messages as M
from secinfer import load
from secinfer.backends.he import session as he_session
from secinfer.backends.he.channel import PLAIN
from secinfer.backends.he.evaluation import HeEvaluation, evaluate, loss_plan
from secinfer.core.evaluation import Evaluation
from secinfer.core.prepare import prepare
from secinfer.errors import UserError
from secinfer.load.dataset import open_dataset

ROOT = Path(__file__).resolve().parents[3]
LOSSES = ("ce", "square", "zloss", "gce", "mae")


class Classifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(8, 12)
        self.fc2 = torch.nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(0.3 * h * h - h)


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("he-eval")
    torch.manual_seed(1)
    x = torch.randn(10, 8)
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(Classifier().eval(), (x,), dynamic_shapes=({0: batch},))
    model = root / "classifier.pt2"
    torch.export.save(program, model)
    with torch.no_grad():
        labels = Classifier()(x).argmax(-1)
    labels[:3] = (labels[:3] + 1) % 4  # three misses
    data = root / "data.npz"
    np.savez(data, inputs=x.numpy(), labels=labels.numpy())
    return model, data


def cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "secinfer.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


def check(report: dict[str, Any]) -> None:
    for name, pair in report["losses"].items():
        tolerance = 2e-2 if name == "ce" else 1e-2
        assert abs(pair["secure"] - pair["plain"]) <= tolerance * abs(pair["plain"]), name
    assert report["accuracy"]["secure"] == report["accuracy"]["plain"]


def test_eval_backend_he_through_the_cli(model_and_data, tmp_path: Path) -> None:
    model, data = model_and_data
    report_path = tmp_path / "r.json"
    done = cli(
        "eval", str(model), str(data), "-b", "he", "--loss", ",".join(LOSSES),
        "--batch-size", "4", "--reveal-to", "model-owner", "--report", str(report_path),
        "--hiding-bits", "12",  # the evaluation's flow; 40 bits (N = 16384) cost 3x the time
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning: --hiding-bits 12" in done.stderr
    report = json.loads(report_path.read_text())
    assert report["examples"] == 10 and report["accuracy"]["plain"] == 0.7
    check(report)
    assert report["comm"]["refreshes"] > 0 and report["comm"]["bytes_sent"]["data_owner"] > 0
    assert report["he"]["loss_depth"]["square"] == 1
    assert 0 < report["he"]["loss_refreshes"] < report["comm"]["refreshes"]
    assert "revealed to the model-owner only" in done.stdout and "| zloss |" in done.stdout
    comm, sent = report["comm"], report["comm"]["bytes_sent"]
    wire = sent["model_owner"] + sent["data_owner"]  # request then reply: both directions
    wan = report["seconds"] + comm["round_trips"] * 0.040 + wire * 8 / 100e6
    assert comm["round_trips"] > comm["refreshes"]
    assert report["estimates"]["wan"] == pytest.approx(wan)
    assert "estimated wall time: LAN (1 ms, 5 Gbps)" in done.stdout


# --- in process ---------------------------------------------------------------------------------
def _session(model: Path, settings: Evaluation, server_settings: Evaluation | None = None):
    """The server in a thread (with a spy on the JSON it receives), ready for a client."""
    loaded = load.load_model(model)
    samples = loaded.calibration_samples()
    graph, plan = prepare(loaded.program, "he", samples, None)
    agreed = server_settings or settings
    evaluation = HeEvaluation(agreed, loss_plan(graph, samples, agreed))
    listener = socket.create_server(("127.0.0.1", 0))
    outcome: dict[str, Any] = {"received": []}
    out_dir = Path(tempfile.mkdtemp())

    def serve() -> None:
        with listener:
            try:
                outcome["record"] = he_session.serve(
                    graph, plan, listener, out_dir, timeout=60, evaluation=evaluation,
                    check_inputs=loaded.check_inputs, link=PLAIN,
                )  # fmt: skip
            except Exception as exc:  # the test inspects what the server raised
                outcome["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], outcome, thread, out_dir


def test_the_model_owner_receives_the_aggregate_and_no_per_example_value(
    model_and_data, monkeypatch
) -> None:
    model, data = model_and_data
    settings = Evaluation(LOSSES, "model-owner")
    received: list[dict[str, Any]] = []
    real = he_session.Channel.recv_json

    def spy(self: Any) -> dict[str, Any]:
        message = real(self)
        if threading.current_thread() is not threading.main_thread():  # the server's side
            received.append(message)
        return message

    monkeypatch.setattr(he_session.Channel, "recv_json", spy)
    port, outcome, thread, out_dir = _session(model, settings)
    client_dir = Path(tempfile.mkdtemp())
    result = evaluate(
        ("127.0.0.1", port), open_dataset(data), 4, settings, client_dir, timeout=60, link=PLAIN
    )
    thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert set(received[1]) == {"session_id", "context_sha256"}  # the key handshake
    kinds = [m.get("kind") for m in received[:1] + received[2:]]
    assert kinds == ["shapes", "batch", "batch", "batch", "end", "masked_totals"]
    assert [m["rows"] for m in received if m.get("kind") == "batch"] == [4, 4, 2]
    masked = received[-1]["masked_totals"]
    assert set(masked) == {*LOSSES, "hit"}  # one value per loss and accuracy
    aggregate = json.loads((out_dir / "aggregate.json").read_text())
    x, labels = np.load(data)["inputs"], np.load(data)["labels"]
    with torch.no_grad():
        logits = Classifier()(torch.from_numpy(x)).double()
    for name in LOSSES:
        want = float(L.reference(name)(logits, torch.from_numpy(labels)))
        assert abs(aggregate["losses"][name] - want) <= 2e-2 * abs(want), name
    assert aggregate["accuracy"] == 0.7
    # the client decrypted the totals plus the server's masks (uniform in +-2^17): it
    # learns the count only, and writes no aggregate
    assert result == {"examples": 10, "revealed_to": "model-owner"}
    assert not (client_dir / "aggregate.json").exists()
    means = [aggregate["losses"][name] for name in LOSSES] + [aggregate["accuracy"]]
    distances = [abs(masked[name] - m) for name, m in zip([*LOSSES, "hit"], means, strict=True)]
    assert max(distances) > 1.0  # all six within 1 of the truth: probability below 2^-100


def test_revealed_to_the_data_owner_the_client_keeps_the_aggregate(model_and_data) -> None:
    model, data = model_and_data
    settings = Evaluation(("square",), "data-owner")
    port, outcome, thread, out_dir = _session(model, settings)
    client_dir = Path(tempfile.mkdtemp())
    result = evaluate(
        ("127.0.0.1", port), open_dataset(data), 8, settings, client_dir, timeout=60, link=PLAIN
    )
    thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert json.loads((client_dir / "aggregate.json").read_text()) == result
    assert result["examples"] == 10 and result["accuracy"] == 0.7
    assert not (out_dir / "aggregate.json").exists()


def test_options_that_would_do_nothing_are_refused() -> None:
    from click.testing import CliRunner

    from secinfer.cli import main

    cases = [
        (["--role", "server", "--port", "1", "--loss", "ce", "--eval-data", "d"], "client's"),
        (["--role", "client", "--connect", "h:1", "--loss", "ce", "--input", "x.npy"], "either"),
        (["--role", "client", "--connect", "h:1", "--eval-data", "d.npz"], "needs --loss"),
    ]
    for args, needle in cases:
        done = CliRunner().invoke(main, ["he-party", *args])
        assert done.exit_code == 2 and needle in done.stderr, (args, done.output)


def test_a_label_out_of_range_stops_both_sides_with_one_line(tmp_path: Path, model_and_data):
    model, _ = model_and_data
    data = tmp_path / "bad.npz"
    np.savez(data, inputs=np.zeros((3, 8), np.float32), labels=np.array([0, 4, 1]))
    settings = Evaluation(("square",), "data-owner")
    port, outcome, thread, _ = _session(model, settings)
    with pytest.raises(UserError, match=r"label.*4"):
        evaluate(
            ("127.0.0.1", port), open_dataset(data), 4, settings, tmp_path, timeout=60, link=PLAIN
        )
    thread.join(60)
    assert isinstance(outcome["error"], M.PeerError) and "4" in str(outcome["error"])


def test_settings_the_client_did_not_agree_to_are_refused(tmp_path: Path, model_and_data):
    model, data = model_and_data
    mine = Evaluation(("square",), "data-owner")
    port, outcome, thread, _ = _session(model, mine, Evaluation(("square",), "model-owner"))
    with pytest.raises(UserError, match="agreed to"):
        evaluate(("127.0.0.1", port), open_dataset(data), 4, mine, tmp_path, timeout=60, link=PLAIN)
    thread.join(60)
    assert isinstance(outcome["error"], M.PeerError)


def test_data_of_the_wrong_input_shape_is_refused_by_the_server(tmp_path: Path, model_and_data):
    model, _ = model_and_data
    data = tmp_path / "wide.npz"
    np.savez(data, inputs=np.zeros((3, 9), np.float32), labels=np.array([0, 1, 2]))
    settings = Evaluation(("square",), "data-owner")
    port, outcome, thread, _ = _session(model, settings)
    with pytest.raises(M.PeerError, match="9"):
        evaluate(
            ("127.0.0.1", port), open_dataset(data), 4, settings, tmp_path, timeout=60, link=PLAIN
        )
    thread.join(60)
    assert isinstance(outcome["error"], UserError)


# --- slow: the digits model --------------------------------------------------------------------
@pytest.mark.slow
def test_the_digits_test_split_under_he(tmp_path: Path) -> None:
    from secinfer.zoo.digits import load_split

    _, _, x, y = load_split(0)
    data = tmp_path / "test.npz"
    np.savez(data, inputs=x.numpy(), labels=y.numpy())
    report_path = tmp_path / "r.json"
    done = cli(
        "eval", str(ROOT / "secinfer" / "data" / "digits_he.pt2"), str(data), "-b", "he",
        "--loss", ",".join(LOSSES), "--batch-size", "180", "--reveal-to", "model-owner",
        "--report", str(report_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    assert report["examples"] == 360
    check(report)

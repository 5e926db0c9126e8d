"""`secinfer eval -b he`, what only HE has: the server sums encrypted losses, the client
decrypts the totals.

The promises every backend shares (losses within the backend's bound of plaintext through
the CLI, on a small classifier and on the digits test split; one line for a bad --loss or
a label out of range) are in `tests/cli/test_eval.py`. Here, in process (server thread,
real sockets) on the same small classifier (`helpers.evaluation`: 8 features, 4 classes,
10 labelled rows in batches of 4, the last one padded and masked):
- with the aggregate revealed to the model owner, every JSON message the server receives
  is recorded: none carries a per-example value (only row counts and the final aggregate),
  and every ciphertext it receives is one it cannot decrypt (tested in `test_he_run`); the
  aggregate within 2e-2 relative of the float64 references; the report's HE costs from
  both sides' records (refreshes, the loss schedule's depth, round trips, the WAN estimate);
- revealed to the data owner, the client keeps the aggregate;
- bad input: a label out of range, settings the client did not agree to, a data set of
  the wrong input shape: one line each, both sides stop.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.evaluation import QUICK_LOSSES, Classifier, export_classifier
from helpers.losses import FENCHEL_YOUNG

from approximations import losses
from protocols.he import messages
from secinfer import load
from secinfer.backends.base import PartyEvaluation
from secinfer.backends.he import session as he_session
from secinfer.backends.he.backend import HE
from secinfer.backends.he.channel import PLAIN
from secinfer.backends.he.evaluation import HeEvaluation, evaluate, loss_plan
from secinfer.core.evaluation import Evaluation
from secinfer.core.prepare import prepare
from secinfer.errors import UserError
from secinfer.load.dataset import open_dataset


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return export_classifier(tmp_path_factory.mktemp("he-eval"))


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


def reveal_to_the_model_owner(model: Path, data: Path, losses: tuple[str, ...]) -> dict[str, Any]:
    """One evaluation of `losses` revealed to the model owner, with every JSON message the
    server received: what each side returned and wrote."""
    settings = Evaluation(losses, "model-owner")
    received: list[dict[str, Any]] = []
    real = he_session.Channel.recv_json

    def spy(self: Any) -> dict[str, Any]:
        message = real(self)
        if threading.current_thread() is not threading.main_thread():  # the server's side
            received.append(message)
        return message

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(he_session.Channel, "recv_json", spy)
        port, outcome, thread, out_dir = _session(model, settings)
        client_dir = Path(tempfile.mkdtemp())
        result = evaluate(
            ("127.0.0.1", port), open_dataset(data), 4, settings, client_dir, timeout=600,
            link=PLAIN,
        )  # fmt: skip
        thread.join(600)
    assert "error" not in outcome, outcome.get("error")
    return {"received": received, "result": result, "server": out_dir, "client": client_dir}


@pytest.fixture(scope="module")
def revealed_to_the_model_owner(model_and_data) -> dict[str, Any]:
    return reveal_to_the_model_owner(*model_and_data, QUICK_LOSSES)


def test_the_model_owner_receives_the_aggregate_and_no_per_example_value(
    model_and_data, revealed_to_the_model_owner
) -> None:
    _, data = model_and_data
    received = revealed_to_the_model_owner["received"]
    out_dir, client_dir = (
        revealed_to_the_model_owner["server"],
        revealed_to_the_model_owner["client"],
    )
    assert set(received[1]) == {"session_id", "context_sha256"}  # the key handshake
    kinds = [m.get("kind") for m in received[:1] + received[2:]]
    assert kinds == ["shapes", "batch", "batch", "batch", "end", "masked_totals"]
    assert [m["rows"] for m in received if m.get("kind") == "batch"] == [4, 4, 2]
    masked = received[-1]["masked_totals"]
    assert set(masked) == {*QUICK_LOSSES, "hit"}  # one value per loss and accuracy
    aggregate = json.loads((out_dir / "aggregate.json").read_text())
    x, labels = np.load(data)["inputs"], np.load(data)["labels"]
    with torch.no_grad():
        logits = Classifier()(torch.from_numpy(x)).double()
    for name in QUICK_LOSSES:
        want = float(losses.reference(name)(logits, torch.from_numpy(labels)))
        assert abs(aggregate["losses"][name] - want) <= 2e-2 * abs(want), name
    assert aggregate["accuracy"] == 0.7
    # the client decrypted the totals plus the server's masks (uniform in +-2^17): it
    # learns the count only, and writes no aggregate
    assert revealed_to_the_model_owner["result"] == {"examples": 10, "revealed_to": "model-owner"}
    assert not (client_dir / "aggregate.json").exists()
    means = [aggregate["losses"][name] for name in QUICK_LOSSES] + [aggregate["accuracy"]]
    names = [*QUICK_LOSSES, "hit"]
    distances = [abs(masked[name] - m) for name, m in zip(names, means, strict=True)]
    assert max(distances) > 1.0  # all six within 1 of the truth: probability below 2^-100


@pytest.mark.slow
def test_the_fenchel_young_totals_reach_the_model_owner_alone(model_and_data) -> None:
    """sparsemax and entmax15 (about a minute of refreshes per batch): the same messages as
    every other loss (what the server receives is the client's refreshed ciphertexts and the
    masked totals, never a value per example), the aggregate within 2e-2 of plaintext."""
    _, data = model_and_data
    run = reveal_to_the_model_owner(*model_and_data, FENCHEL_YOUNG)
    received = run["received"]
    kinds = [m.get("kind") for m in received[:1] + received[2:]]
    assert kinds == ["shapes", "batch", "batch", "batch", "end", "masked_totals"]
    assert set(received[-1]["masked_totals"]) == {*FENCHEL_YOUNG, "hit"}
    aggregate = json.loads((run["server"] / "aggregate.json").read_text())
    x, labels = np.load(data)["inputs"], np.load(data)["labels"]
    with torch.no_grad():
        logits = Classifier()(torch.from_numpy(x)).double()
    for name in FENCHEL_YOUNG:
        want = float(losses.reference(name)(logits, torch.from_numpy(labels)))
        assert abs(aggregate["losses"][name] - want) <= 2e-2 * abs(want) + 1e-3, name
    assert not (run["client"] / "aggregate.json").exists()


def test_the_report_counts_the_he_costs(revealed_to_the_model_owner) -> None:
    """What `secinfer eval -b he` adds to its report, from the records both sides wrote:
    refreshes (some of them the loss schedule's), round trips (refreshes plus the protocol's
    exchanges), the square loss at depth 1, and the WAN estimate = seconds + round trips x
    40 ms + both directions' bytes at 100 Mbps."""
    server_dir, client_dir = (
        revealed_to_the_model_owner["server"],
        revealed_to_the_model_owner["client"],
    )
    aggregate = json.loads((server_dir / "aggregate.json").read_text())
    server = json.loads((server_dir / "server.json").read_text())
    client = json.loads((client_dir / "client.json").read_text())
    costs = HE.evaluation_costs(PartyEvaluation(aggregate, server, client, seconds=2.0))
    comm, sent = costs["comm"], costs["comm"]["bytes_sent"]
    assert comm["refreshes"] > 0 and sent["data_owner"] > 0 and sent["model_owner"] > 0
    assert costs["he"]["loss_depth"]["square"] == 1
    assert 0 < costs["he"]["loss_refreshes"] < comm["refreshes"]
    assert comm["round_trips"] > comm["refreshes"]
    wire = sent["model_owner"] + sent["data_owner"]  # request then reply: both directions
    wan = 2.0 + comm["round_trips"] * 0.040 + wire * 8 / 100e6
    assert costs["estimates"]["wan"] == pytest.approx(wan)


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
    assert isinstance(outcome["error"], messages.PeerError) and "4" in str(outcome["error"])


def test_settings_the_client_did_not_agree_to_are_refused(tmp_path: Path, model_and_data):
    model, data = model_and_data
    mine = Evaluation(("square",), "data-owner")
    port, outcome, thread, _ = _session(model, mine, Evaluation(("square",), "model-owner"))
    with pytest.raises(UserError, match="agreed to"):
        evaluate(("127.0.0.1", port), open_dataset(data), 4, mine, tmp_path, timeout=60, link=PLAIN)
    thread.join(60)
    assert isinstance(outcome["error"], messages.PeerError)


def test_data_of_the_wrong_input_shape_is_refused_by_the_server(tmp_path: Path, model_and_data):
    model, _ = model_and_data
    data = tmp_path / "wide.npz"
    np.savez(data, inputs=np.zeros((3, 9), np.float32), labels=np.array([0, 1, 2]))
    settings = Evaluation(("square",), "data-owner")
    port, outcome, thread, _ = _session(model, settings)
    with pytest.raises(messages.PeerError, match="9"):
        evaluate(
            ("127.0.0.1", port), open_dataset(data), 4, settings, tmp_path, timeout=60, link=PLAIN
        )
    thread.join(60)
    assert isinstance(outcome["error"], UserError)

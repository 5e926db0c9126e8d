"""Private evaluation under HE: encrypted per-batch sums, one aggregate decrypted.

After the session's set-up (`secinfer.backends.he.server.open_server` and
`secinfer.backends.he.client.open_client`: hello with the evaluation's settings and the
model's batch axis, which fixes the client's rows when it is static
(`dataset.batch_shape`); shapes of one batch, layouts, keys), per batch:

    client  {"batch", rows, examples}, the batch's inputs encrypted (padded to the
            announced rows with copies of its first row)
    server  runs the graph; {"labels", layout of the logits}
    client  its labels, checked, as encrypted one-hot rows in that layout (the padding
            rows repeat the first row's label)
    server  `protocols.he.losses.per_example`, times w = 1 / examples on the batch's real
            rows and 0 on the padding, summed over the rows, added to its encrypted
            running totals (so the totals are means, bounded by the largest per-example
            value, however large the data set; the accuracy's count, mean x N, is then
            exact after rounding while no label's logit has another within the tie
            resolution (`protocols.he.losses`) and N times the decrypted mean's CKKS noise
            plus the count polynomial's error, 5e-8 per hit, stays below 1/2); {"next"}

refreshes interleaving as in a query. After {"end"} the server zeroes every slot of each
total but the one holding it (so partial sums in the other slots never reach the client)
and sends one ciphertext per loss and one for the accuracy:

    --reveal-to data-owner    the totals as they are; the client decrypts them and keeps
                              the aggregate (`aggregate.json`); the server learns nothing
    --reveal-to model-owner   each total plus a uniform mask in +-2^mask_bits that the
                              server keeps; the client decrypts x + r (within statistical
                              distance |x| / 2^(mask_bits + 1) of the mask alone, as a
                              refresh), returns it, and the server removes r and writes
                              `aggregate.json`: the client learns nothing beyond the count

Both sides must agree on the settings: the server announces them (with the bounds it
calibrated) and the client refuses a mismatch with its own. The server learns the number
of examples (public in every run) and, revealed to it, the aggregate; never a label, a
per-example value or the client's inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols.he import messages
from protocols.he.losses import HeLossPlan, per_example
from protocols.he.refresh import uniform_mask
from protocols.he.tensor import HeTensor
from protocols.tls import Link
from secinfer.backends.he.channel import Channel, connect, expect_hello, guarded
from secinfer.backends.he.client import open_client
from secinfer.backends.he.server import ServerSession
from secinfer.core.evaluation import Evaluation, aggregate, progress_bar
from secinfer.core.execute import RunResult
from secinfer.errors import UserError
from secinfer.load.dataset import (
    BatchAxis,
    Dataset,
    batch_axis_json,
    batch_shape,
    check_labels,
    padded,
    parse_batch_axis,
)
from secinfer.report.files import write_json


@dataclass(frozen=True)
class HeEvaluation:
    """The server's evaluation: what both agreed to, and its calibrated approximations."""

    settings: Evaluation
    plan: HeLossPlan
    batch: BatchAxis = None  # the model's batch axis: how the client batches its data

    def announce(self) -> dict[str, Any]:
        announced = {**self.settings.to_dict(), "approximations": self.plan.to_dict()}
        if self.batch is not None:
            announced["batch_axis"] = batch_axis_json(self.batch)
        return announced


def loss_plan(
    graph: Any, samples: list[tuple[torch.Tensor, ...]], settings: Evaluation
) -> HeLossPlan:
    """The bounds of the loss approximations, from the model owner's logits on its own
    calibration samples (`HeLossPlan.calibrated`); UserError unless logits are (N, C)."""
    from secinfer.core.execute import Executor

    outputs = [Executor(graph, "plain").run(sample).outputs[0] for sample in samples]
    if not outputs or any(o.dim() != 2 for o in outputs):
        shape = tuple(outputs[0].shape) if outputs else "none"
        raise UserError(
            f"private evaluation needs logits of shape (N, classes); the model gives {shape} "
            "(or has no calibration samples)"
        )
    return HeLossPlan.calibrated(
        torch.cat(outputs),
        zloss_a=settings.zloss_a,
        zloss_b=settings.zloss_b,
        gce_q=settings.gce_q,
        compsum_tau=settings.compsum_tau,
    )


# --- server -------------------------------------------------------------------------------
def serve_evaluation(
    session: ServerSession, evaluation: HeEvaluation, out_dir: Path
) -> tuple[RunResult, dict[str, Any]]:
    """The server's batch loop (module docstring); (the last batch's run, record fields)."""
    channel = session.channel
    names = list(evaluation.settings.losses)
    rows_announced = int(session.specs[0]["shape"][0])
    totals: dict[str, HeTensor] = {}
    examples, batches, loss_seconds, loss_refreshes = 0, 0, 0.0, 0
    result, announced = None, None
    while True:
        message = channel.recv_json()
        if message.get("kind") == "end":
            break
        rows, total_rows = message.get("rows"), message.get("examples")
        if message.get("kind") != "batch" or not isinstance(rows, int):
            raise messages.MessageError(f"expected a batch or the end, got {message.get('kind')!r}")
        if not 1 <= rows <= rows_announced:
            raise UserError(f"a batch of {rows} rows; the client announced {rows_announced}")
        if announced is None:
            announced = total_rows
        if (
            not isinstance(total_rows, int)
            or total_rows != announced
            or examples + rows > total_rows
        ):
            raise messages.MessageError(
                f"the client announced {announced} examples, then {total_rows}"
            )
        session.step = f"batch {batches + 1}: "
        result = session.run(session.receive_inputs())
        logits = result.outputs[0]
        if not isinstance(logits, HeTensor) or logits.dim() != 2:
            raise UserError("private evaluation needs encrypted logits of shape (N, classes)")
        logits = logits.feature_major()  # the losses take the classes from ciphertexts
        channel.send_json({"kind": "labels", "layout": logits.layout.to_dict()})
        labels = session.receive_tensor(logits.layout)
        channel.set_status(f"batch {batches + 1}: the losses")
        began, refreshed = time.perf_counter(), _refreshes(session)
        weights = np.zeros(logits.shape[0])
        weights[:rows] = 1.0 / announced
        values = per_example(logits, labels, names, evaluation.plan)
        for name, value in values.items():
            batch_sum = (value * weights).sum(0)
            totals[name] = batch_sum if name not in totals else totals[name] + batch_sum
        loss_seconds += time.perf_counter() - began
        loss_refreshes += _refreshes(session) - refreshed
        examples += rows
        batches += 1
        channel.send_json({"kind": "next"})
    if result is None or examples != announced:
        raise UserError(f"the client sent {examples} of the {announced} examples it announced")
    to_model_owner = evaluation.settings.reveal_to == "model-owner"
    bound = 2.0**session.mask_bits
    masks = {name: float(uniform_mask(1, bound)[0]) if to_model_owner else 0.0 for name in totals}
    channel.set_status("the totals")
    for name in [*names, "hit"]:
        total = totals[name].masked()  # every other slot zero
        total.ensure_level(0)
        if masks[name]:  # the mask goes into the total's own slot only
            slot = np.zeros(session.engine.slots)
            slot[total.layout.positions().reshape(-1)] = masks[name]
            grid = np.empty((), dtype=object)
            grid[()] = session.engine.add_plain(total.grid.item(), slot, cache=False)
            total = HeTensor(session.engine, total.layout, grid, clean=True, refresher=None)
        session.send_tensor("total", total, name=name)
    reply = channel.recv_json()
    fields = {
        "evaluation": evaluation.announce(),
        "examples": examples,
        "batches": batches,
        "loss_seconds": loss_seconds,
        "loss_refreshes": loss_refreshes,
        "loss_depth": {n: evaluation.plan.depth(n) for n in [*names, "accuracy"]},
    }
    if to_model_owner:
        masked = reply.get("masked_totals")
        if reply.get("kind") != "masked_totals" or not isinstance(masked, dict):
            raise messages.MessageError(f"expected the masked totals, got {reply.get('kind')!r}")
        if sorted(masked) != sorted(masks) or not all(
            isinstance(v, float) for v in masked.values()
        ):
            raise messages.MessageError("the client's masked totals do not match the evaluation")
        sums = [(masked[n] - masks[n]) * examples for n in [*names, "hit"]]
        write_json(out_dir / "aggregate.json", aggregate(sums, evaluation.settings, examples))
    elif reply.get("kind") != "received":
        raise messages.MessageError(
            f"expected the client's confirmation, got {reply.get('kind')!r}"
        )
    return result, fields


def _refreshes(session: ServerSession) -> int:
    return session.refresher.stats.refreshes if session.refresher else 0


# --- client -------------------------------------------------------------------------------
def evaluate(
    address: tuple[str, int],
    data: Dataset,
    batch_size: int,
    settings: Evaluation,
    out_dir: Path,
    *,
    timeout: float,
    link: Link,
) -> dict[str, Any]:
    """The client's side (module docstring) over `link` (a `protocols.tls.Link`;
    `Link(None)` is the opt-in plain socket); returns the aggregate when revealed to the
    client, else only the count."""
    channel = connect(address, timeout, link)
    return guarded(channel, lambda: _evaluate(channel, data, batch_size, settings, out_dir))


def _evaluate(
    channel: Channel, data: Dataset, batch_size: int, settings: Evaluation, out_dir: Path
) -> dict[str, Any]:
    began = time.perf_counter()
    hello = expect_hello(channel)
    asked = hello.get("evaluation")
    if asked is None:
        raise UserError(
            "the server answers queries, not a private evaluation: start it with --loss"
        )
    wanted = settings.to_dict()
    if {k: asked.get(k) for k in wanted} != wanted:
        raise UserError(
            f"the server asks for { ({k: asked.get(k) for k in wanted}) }, this client agreed to "
            f"{wanted}: start both with the same --loss, hyper-parameters and --reveal-to"
        )
    names = [spec["name"] for spec in hello["inputs"]]
    shape = batch_shape(_batch_axis(asked), batch_size)
    rows = max(shape.least, min(shape.size, data.rows))
    client = None
    examples = 0
    bar = progress_bar(data.rows)
    for batch in data.batches(shape, names):
        count = len(batch.labels)
        inputs = tuple(padded(t, rows) for t in batch.inputs)
        shapes = [tuple(t.shape) for t in inputs]
        if client is None:
            client, announced = open_client(channel, inputs), shapes
        elif shapes != announced:
            raise UserError(
                f"DATA: inputs of shape {shapes} after row {examples}, the first batch's were "
                f"{announced}: every shard needs the same input shape"
            )
        channel.send_json({"kind": "batch", "rows": count, "examples": data.rows})
        channel.set_status(f"batch at row {examples}: encrypting")
        client.send_inputs(inputs)
        message = client.await_message("labels")
        shape = message["layout"]["shape"]
        classes = int(shape[-1])
        check_labels(batch.labels, classes, examples)
        onehot = np.zeros((int(shape[0]), classes))
        onehot[np.arange(count), batch.labels.numpy()] = 1.0
        onehot[count:] = onehot[0]
        channel.set_status(f"batch at row {examples}: encrypting the labels")
        client.send_values(onehot, message["layout"])
        client.await_message("next")
        examples += count
        if bar is not None:
            bar.update(count)
    if bar is not None:
        bar.close()
    if client is None:
        raise UserError("DATA: the data set is empty (0 labelled rows)")
    channel.send_json({"kind": "end"})
    totals = {}
    for _ in range(len(settings.losses) + 1):
        message = client.await_message("total")
        totals[message["name"]] = float(client.receive_values(message, "a total").reshape(-1)[0])
    result: dict[str, Any] = {"examples": examples, "revealed_to": settings.reveal_to}
    if settings.reveal_to == "model-owner":  # masked: nothing here but the count
        channel.send_json({"kind": "masked_totals", "masked_totals": totals})
    else:
        channel.send_json({"kind": "received"})
        sums = [totals[n] * examples for n in [*settings.losses, "hit"]]
        result = aggregate(sums, settings, examples)
        write_json(out_dir / "aggregate.json", result)
    write_json(out_dir / "client.json", {**client.record(began), "examples": examples})
    return result


def _batch_axis(announced: dict[str, Any]) -> BatchAxis:
    """The model's batch axis as the server announced it (None: none announced)."""
    try:
        return parse_batch_axis(announced.get("batch_axis"))
    except ValueError as exc:
        raise messages.MessageError(f"the server's batch axis: {exc}") from None

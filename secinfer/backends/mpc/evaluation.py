"""Private evaluation under MPC: losses on shares, one aggregate revealed to one party.

Both parties run the graph on each batch as in a query (`secinfer.backends.mpc.party`), but the
logits are never opened: the data owner shares its labels as one-hot rows, `protocols.mpc.losses`
gives every requested loss per example on shares, and each party adds the batch's sums to
its running share of the totals. After the last batch the totals (one value per loss and
the hit count) are opened to the party named by `reveal_to` only; the other party learns
nothing but the number of examples and the shapes (public, as in every run). A model with
a static batch axis gets batches of exactly that many rows (`dataset.batch_shape`), the
last padded with copies of its first row; the losses are taken over the real rows only.

Both parties must be started with the same losses, hyper-parameters and `reveal_to`: the
model owner announces its settings and the data owner refuses a mismatch (it consents to
what is revealed). The revealed party writes `aggregate.json`: {"examples", "losses":
{name: mean}, "accuracy"}; both write their cost record as `secinfer.backends.mpc.party` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from protocols.mpc.meter import Meter
from protocols.mpc.reveal import reveal_to
from protocols.mpc.runtime import PartySettings, Role, start_party, stop_party
from secinfer.backends.mpc import wire
from secinfer.backends.mpc.party import (
    Offline,
    Query,
    announce_model,
    announced_queries,
    input_shapes,
    keys_ahead,
    node_costs,
    party_record,
    placeholders,
    receive_model,
)
from secinfer.core.architecture import Architecture
from secinfer.core.evaluation import Evaluation, aggregate
from secinfer.core.execute import Executor
from secinfer.core.graph import Graph, build_graph
from secinfer.core.options import MPC_COMPARISONS
from secinfer.core.plan import Plan
from secinfer.errors import UserError
from secinfer.load.dataset import check_labels
from secinfer.report.files import write_json

if TYPE_CHECKING:
    from protocols.mpc.losses import MpcLossKernels

Batches = Iterable[tuple[tuple[torch.Tensor, ...], torch.Tensor]]


def _batch_totals(
    graph: Graph,
    plan: Plan,
    inputs: tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    classes: int,
    role: Role,
    meter: Meter,
    offline: Offline,
    evaluation: Evaluation,
) -> tuple[Any, Query]:
    """One batch on shares: (a sharing of [sum of each loss..., hits], its costs)."""
    from protocols.mpc import losses
    from protocols.mpc.crypten_setup import import_crypten

    crypten = import_crypten()
    shapes = input_shapes(inputs)
    keys, key_seconds = keys_ahead(offline, shapes, meter)
    before = meter.snapshot()
    began = time.perf_counter()
    executor = Executor(graph, "mpc", plan, seeder=offline.seeder, meter=meter.snapshot)
    with offline.keys.during(shapes):
        result = executor.run(inputs)
    logits = result.outputs[0]
    onehot = torch.nn.functional.one_hot(labels.long().clamp(0, classes - 1), classes).float()
    mine = role is Role.DATA_OWNER
    target = crypten.cryptensor(
        onehot if mine else torch.zeros_like(onehot), src=int(Role.DATA_OWNER)
    )
    if logits.size(0) != len(labels):  # a padded batch (a static batch axis): real rows only
        logits = logits[: len(labels)]
    rows = logits.reshape(-1, classes)
    values = losses.per_example(
        rows,
        target,
        list(evaluation.losses),
        a=evaluation.zloss_a,
        b=evaluation.zloss_b,
        q=evaluation.gce_q,
        tau=evaluation.compsum_tau,
        kernels=loss_kernels(),
    )
    order = [*evaluation.losses, "hit"]
    sums = crypten.stack([values[name].sum() for name in order])
    seconds = time.perf_counter() - began
    query = Query(meter.snapshot() - before, seconds, node_costs(result), keys, key_seconds)
    return sums, query


def loss_kernels() -> MpcLossKernels:
    """The losses' kernels with the default comparisons (`options.MPC_COMPARISONS`): FSS
    keys over the whole ring, since logits have no calibrated interval (about 1.5 kB of
    keys per compared logit), or CrypTen's."""
    from protocols.mpc import losses
    from protocols.mpc.fss_compare import RING_BITS

    fss = MPC_COMPARISONS == "fss"
    return losses.MpcLossKernels(fss_bits=RING_BITS if fss else None)


def eval_model_owner(
    settings: PartySettings,
    program: torch.export.ExportedProgram,
    plan: Plan,
    meta: dict[str, Any],
    evaluation: Evaluation,
    out_dir: Path,
) -> dict[str, Any]:
    """The model owner's side of a private evaluation; returns (and writes) its record."""
    graph = build_graph(program)
    start_party(Role.MODEL_OWNER, settings)
    meter = Meter().install()
    batches: list[Query] = []
    try:
        message = {"plan": plan.to_dict(), "evaluation": evaluation.to_dict(), **meta}
        offline = announce_model(program, graph, message, meter)
        totals, examples = None, 0
        for spec in announced_queries():
            labels = torch.zeros(int(spec["labels"]), dtype=torch.long)
            sums, query = _batch_totals(
                graph, plan, placeholders(spec), labels, int(spec["classes"]),
                Role.MODEL_OWNER, meter, offline, evaluation,
            )  # fmt: skip
            totals = sums if totals is None else totals + sums
            examples += len(labels)
            batches.append(query)
        opened = reveal_to(totals, int(Role.from_label(evaluation.reveal_to)))
        record = party_record(Role.MODEL_OWNER, meter, offline, batches)
    finally:
        meter.remove()
        stop_party()
    return _write_results(Role.MODEL_OWNER, record, opened, evaluation, examples, out_dir)


def eval_data_owner(
    settings: PartySettings,
    read_batches: Callable[[Architecture, dict[str, Any]], Batches],
    evaluation: Evaluation,
    out_dir: Path,
) -> dict[str, Any]:
    """The data owner's side: its batches' shapes, its labels as shares, its consent."""
    start_party(Role.DATA_OWNER, settings)
    meter = Meter().install()
    batches: list[Query] = []
    try:

        def consent(meta: dict[str, Any]) -> None:
            if meta.get("evaluation") != evaluation.to_dict():
                raise UserError(
                    f"the model owner asks for {meta.get('evaluation')}, this data owner "
                    f"agreed to {evaluation.to_dict()}: start both with the same --loss, "
                    "hyper-parameters and --reveal-to"
                )

        public, meta, graph, plan, offline = receive_model(meter, consent)
        totals, examples = None, 0
        try:
            stream = iter(read_batches(public, meta))
            for inputs, labels in stream:
                classes = int(meta["classes"])
                check_labels(labels, classes, examples)
                spec = {
                    "shapes": [list(t.shape) for t in inputs],
                    "dtypes": [str(t.dtype).removeprefix("torch.") for t in inputs],
                    "labels": len(labels),
                    "classes": classes,
                }
                wire.send_json(spec, src=Role.DATA_OWNER)
                sums, query = _batch_totals(
                    graph, plan, inputs, labels, classes, Role.DATA_OWNER, meter, offline,
                    evaluation,
                )  # fmt: skip
                totals = sums if totals is None else totals + sums
                examples += len(labels)
                batches.append(query)
            if totals is None:
                raise UserError("DATA: the data set is empty (0 labelled rows)")
        except UserError as exc:
            wire.send_json({"error": str(exc)}, src=Role.DATA_OWNER)
            raise
        wire.send_json({"done": True}, src=Role.DATA_OWNER)
        opened = reveal_to(totals, int(Role.from_label(evaluation.reveal_to)))
        record = party_record(Role.DATA_OWNER, meter, offline, batches)
    finally:
        meter.remove()
        stop_party()
    return _write_results(Role.DATA_OWNER, record, opened, evaluation, examples, out_dir)


def _write_results(
    role: Role,
    record: dict[str, Any],
    opened: torch.Tensor | None,
    evaluation: Evaluation,
    examples: int,
    out_dir: Path,
) -> dict[str, Any]:
    """The party's cost record, and `aggregate.json` where the totals were opened."""
    if opened is not None:
        totals = opened.double().tolist()
        write_json(out_dir / "aggregate.json", aggregate(totals, evaluation, examples))
    write_json(out_dir / f"{role.label}.json", record)
    return record


__all__ = ["Evaluation", "eval_data_owner", "eval_model_owner"]

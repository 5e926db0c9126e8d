"""`secinfer eval`: losses and accuracy of a model on labelled data, backend vs plaintext.

The data set streams batch by batch (`secinfer.load.dataset`); per batch the backend and the
plaintext reference each give logits, and each chosen loss adds its per-example sum to a
running total (losses are means over examples: total / count at the end). Accuracy counts
argmax hits. Memory holds one batch and the totals.

Backends: `plain` and `approx` (float64 with the plan's approximations: the approximation
error of the model alone) run here; `mpc` runs the three parties as processes
(`secinfer.backends.mpc.evaluation`: losses on shares, only the aggregate opened, to one
party), and the plaintext reference is computed here, where model and data both are (a local run).
`he` runs the server and the client as processes (`secinfer.backends.he.evaluation`:
encrypted per-batch sums, the aggregate decrypted by the client alone).
"""

from __future__ import annotations

import time
from typing import Any

from approximations.losses import LossOptions
from secinfer import backends
from secinfer.backends.base import RunOptions
from secinfer.core.evaluation import Evaluation, Totals, progress_bar
from secinfer.core.execute import Executor
from secinfer.load.dataset import BatchShape, Dataset, batch_axis, batch_shape, check_labels


def evaluate_local(
    loaded: Any,
    graph: Any,
    plan: Any,
    backend: str,
    data: Dataset,
    names: list[str],
    options: LossOptions,
    batch_size: int | BatchShape,
) -> dict[str, Any]:
    """Run `backend` and `plain` over `data`; the report's losses, accuracy and counts.
    The data streams in the model's batch shape (`model_batches`); padding rows are run
    and dropped before any total."""
    began = time.perf_counter()
    shape = model_batches(loaded, batch_size)
    secure, plain = Totals(), Totals()
    bar = progress_bar(data.rows)
    for batch in data.batches(shape, loaded.input_names):
        loaded.check_inputs(batch.inputs)
        reference = Executor(graph, "plain").run(batch.inputs).outputs[0].double()
        reference = reference[: batch.rows]
        check_labels(batch.labels, reference.shape[-1], plain.count)
        ours = (
            reference
            if backend == "plain"
            else Executor(graph, backend, plan).run(batch.inputs).outputs[0].double()
        )
        ours = ours[: batch.rows]
        secure.add(ours, batch.labels, names, options)
        plain.add(reference, batch.labels, names, options)
        if bar is not None:
            bar.update(len(batch.labels))
    if bar is not None:
        bar.close()
    got, want = secure.means(), plain.means()
    report = {
        "backend": backend,
        "examples": secure.count,
        "batch_size": shape.size,
        "seconds": time.perf_counter() - began,
        "losses": {name: {"secure": got[name], "plain": want[name]} for name in names},
        "accuracy": {"secure": secure.correct / secure.count, "plain": plain.correct / plain.count},
    }
    if backend != "plain" and plan is not None:
        report["plan_for"] = plan.target
    return report


def model_batches(
    loaded: Any, batch_size: int | BatchShape, *, explicit: bool | None = False
) -> BatchShape:
    """How the data streams into `loaded`'s program (`dataset.batch_shape` of its batch
    axis): a static batch of b rows gives batches of b, the last padded."""
    if isinstance(batch_size, BatchShape):
        return batch_size
    return batch_shape(batch_axis(loaded.program), batch_size, explicit=explicit)


def evaluate_secure(
    backend: str,
    loaded: Any,
    graph: Any,
    plan: Any,
    model_path: Any,
    data_path: Any,
    data: Dataset,
    names: list[str],
    options: LossOptions,
    batch_size: int | BatchShape,
    reveal_to: str,
    run_options: RunOptions,
) -> dict[str, Any]:
    """A secure backend's private evaluation by its parties (`SecureBackend.evaluate_parties`),
    with the plaintext reference computed here beside it, both streaming the data in the
    model's batch shape (`model_batches`; the data owner derives the same from the
    architecture)."""
    chosen = backends.get(backend)
    shape = model_batches(loaded, batch_size)
    evaluation = Evaluation(
        tuple(names),
        reveal_to,
        options.zloss_a,
        options.zloss_b,
        options.gce_q,
        options.compsum_tau,
    )
    evaluated = chosen.evaluate_parties(model_path, data_path, evaluation, shape.size, run_options)
    aggregate_ = evaluated.aggregate
    reference = evaluate_local(loaded, graph, plan, "plain", data, names, options, shape)
    report = {
        "backend": backend,
        "examples": aggregate_["examples"],
        "batch_size": shape.size,
        "plan_for": plan.target,
        "seconds": evaluated.seconds,
        "reveal_to": reveal_to,
        "losses": {
            name: {
                "secure": aggregate_["losses"][name],
                "plain": reference["losses"][name]["plain"],
            }
            for name in names
        },
        "accuracy": {"secure": aggregate_["accuracy"], "plain": reference["accuracy"]["plain"]},
    }
    report.update(chosen.evaluation_costs(evaluated))
    return report

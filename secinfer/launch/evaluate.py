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

from approximations import losses as L
from secinfer.core.evaluation import Evaluation, Totals, progress_bar
from secinfer.core.execute import Executor
from secinfer.load.dataset import BatchShape, Dataset, batch_axis, batch_shape, check_labels

LOCAL = ("plain", "approx")


def evaluate_local(
    loaded: Any,
    graph: Any,
    plan: Any,
    backend: str,
    data: Dataset,
    names: list[str],
    options: L.LossOptions,
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
    options: L.LossOptions,
    batch_size: int | BatchShape,
    reveal_to: str,
    config_path: Any = None,
    trust_model: bool = False,
) -> dict[str, Any]:
    """The parties' private evaluation (`mpc`: three processes, `he`: two), with the
    plaintext reference computed here beside it, both streaming the data in the model's
    batch shape (`model_batches`; the data owner derives the same from the architecture)."""
    from secinfer.launch.local import run_local_evaluation, run_local_he_evaluation

    shape = model_batches(loaded, batch_size)

    evaluation = Evaluation(
        tuple(names), reveal_to, options.zloss_a, options.zloss_b, options.gce_q
    )
    launch = run_local_evaluation if backend == "mpc" else run_local_he_evaluation
    aggregate_, model_owner, data_owner, seconds = launch(
        model_path,
        data_path,
        evaluation,
        trust_model=trust_model,
        config=config_path,
        batch_size=shape.size,
    )
    reference = evaluate_local(loaded, graph, plan, "plain", data, names, options, shape)
    report = {
        "backend": backend,
        "examples": aggregate_["examples"],
        "batch_size": shape.size,
        "plan_for": plan.target,
        "seconds": seconds,
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
    if backend == "mpc":
        from secinfer.report.mpc import estimate

        mo, do = model_owner["run"], data_owner["run"]
        rounds = max(mo["rounds"], do["rounds"])
        report["comm"] = {
            "bytes_sent": {"model_owner": mo["bytes_sent"], "data_owner": do["bytes_sent"]},
            "rounds": rounds,
            "offline": {"model_owner": model_owner["offline"], "data_owner": data_owner["offline"]},
        }
        report["estimates"] = estimate(seconds, rounds, max(mo["bytes_sent"], do["bytes_sent"]))
    else:
        from secinfer.report.he import PROTOCOL_ROUND_TRIPS, he_estimates

        # besides refreshes: the query's three exchanges (the totals and their answer in
        # place of the output's) and two per batch (labels, next)
        trips = model_owner["refreshes"] + PROTOCOL_ROUND_TRIPS + 2 * model_owner["batches"]
        report["estimates"] = he_estimates(seconds, trips, model_owner, data_owner)
        report["comm"] = {
            "bytes_sent": {
                "model_owner": model_owner["bytes_sent"],
                "data_owner": data_owner["bytes_sent"],
            },
            "refreshes": model_owner["refreshes"],
            "round_trips": trips,
            "public_context_bytes": data_owner["public_context_bytes"],
        }
        report["he"] = {
            "params": model_owner["params"],
            "loss_depth": model_owner["loss_depth"],
            "loss_seconds": model_owner["loss_seconds"],
            "loss_refreshes": model_owner["loss_refreshes"],
            "approximations": model_owner["evaluation"]["approximations"],
        }
    return report

"""`secinfer eval`: losses and accuracy of a model on labelled data, backend vs plaintext.

The data set streams batch by batch (`secinfer.dataset`); per batch the backend and the
plaintext reference each give logits, and each chosen loss adds its per-example sum to a
running total (losses are means over examples: total / count at the end). Accuracy counts
argmax hits. Memory holds one batch and the totals.

Backends: `plain` and `approx` (float64 with the plan's approximations: the approximation
error of the model alone) run here; `mpc` runs the three parties as processes
(`secinfer.eval_party`: losses on shares, only the aggregate opened, to one party), and
the plaintext reference is computed here, where model and data both are (a local run).
`he` runs the server and the client as processes (`secinfer.he_eval`: encrypted
per-batch sums, the aggregate decrypted by the client alone).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from approximations import losses as L
from secinfer.dataset import BatchShape, Dataset, batch_axis, batch_shape, check_labels
from secinfer.errors import UserError
from secinfer.execute import Executor

LOCAL = ("plain", "approx")


@dataclass(frozen=True)
class Evaluation:
    """What is computed and who learns it (both parties must agree)."""

    losses: tuple[str, ...]
    reveal_to: str  # "model-owner" or "data-owner"
    zloss_a: float = 1.0
    zloss_b: float = 1.0
    gce_q: float = 0.7

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "losses": list(self.losses)}

    def arguments(self) -> list[str]:
        """The `party` / `he-party` options that give a party process these settings."""
        return [
            "--loss", ",".join(self.losses), "--reveal-to", self.reveal_to,
            "--zloss-a", repr(self.zloss_a), "--zloss-b", repr(self.zloss_b),
            "--gce-q", repr(self.gce_q),
        ]  # fmt: skip


def aggregate(totals: list[float], evaluation: Evaluation, examples: int) -> dict[str, Any]:
    """What the revealed party writes: the mean of each loss and the accuracy, from the
    opened totals (one per loss, in order, then the hit count, rounded: exact while the
    count's error stays below 1/2)."""
    means = {name: totals[k] / examples for k, name in enumerate(evaluation.losses)}
    return {"examples": examples, "losses": means, "accuracy": round(totals[-1]) / examples}


@dataclass
class Totals:
    """Running sums over examples: per loss, and argmax hits."""

    sums: dict[str, float] = field(default_factory=dict)
    correct: int = 0
    count: int = 0

    def add(
        self, logits: torch.Tensor, labels: torch.Tensor, names: list[str], options: L.LossOptions
    ) -> None:
        n = len(labels)
        for name in names:
            mean = float(L.reference(name, options)(logits, labels))
            self.sums[name] = self.sums.get(name, 0.0) + mean * n
        self.correct += int((logits.argmax(-1) == labels).sum())
        self.count += n

    def means(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()}


def check_hyper_parameters(zloss_a: float, gce_q: float) -> None:
    if zloss_a <= 0 or not 0 < gce_q <= 1:
        raise UserError(f"--zloss-a {zloss_a} / --gce-q {gce_q}: need a > 0 and 0 < q <= 1")


def parse_losses(text: str) -> list[str]:
    """`--loss ce,square`: known names, in the order given, without repeats."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in L.LOSS_NAMES]
    if unknown or not names:
        raise UserError(
            f"--loss {text}: unknown loss {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(L.LOSS_NAMES)}"
        )
    return list(dict.fromkeys(names))


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


def progress_bar(total: int) -> Any:
    """A tqdm bar over examples on an interactive terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="example", leave=False, file=sys.stderr)


def table(report: dict[str, Any]) -> str:
    """The terminal table: each loss and accuracy, secure vs plaintext, relative error."""
    rows = [f"| metric | {report['backend']} | plain | relative error |", "|---|---|---|---|"]
    for name, pair in report["losses"].items():
        rel = abs(pair["secure"] - pair["plain"]) / max(abs(pair["plain"]), 1e-12)
        rows.append(f"| {name} | {pair['secure']:.6g} | {pair['plain']:.6g} | {rel:.2e} |")
    acc = report["accuracy"]
    rows.append(f"| accuracy | {acc['secure']:.4f} | {acc['plain']:.4f} | - |")
    lines = [*rows, f"{report['examples']} examples in {report['seconds']:.2f} s"]
    if report.get("plan_for") and report["backend"] == "approx":
        lines.append(f"plan for: {report['plan_for']} (approx runs that backend's approximations)")
    if "comm" in report:
        sent = report["comm"]["bytes_sent"]
        lines.append(
            f"revealed to the {report['reveal_to']} only (the aggregate); sent: model owner "
            f"{sent['model_owner'] / 1e6:.1f} MB, data owner {sent['data_owner'] / 1e6:.1f} MB, "
            + (
                f"{report['comm']['rounds']} rounds"
                if "rounds" in report["comm"]
                else f"{report['comm']['refreshes']} refreshes"
            )
        )
    if "estimates" in report:
        from secinfer.secure_report import estimate_line

        comm = report["comm"]
        counted = (
            f"{comm['rounds']} rounds" if "rounds" in comm else f"{comm['round_trips']} round trips"
        )
        lines.append(estimate_line(report["estimates"], counted))
    return "\n".join(lines)


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
    from secinfer.launch import run_local_evaluation, run_local_he_evaluation

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
        from secinfer.secure_report import estimate

        mo, do = model_owner["run"], data_owner["run"]
        rounds = max(mo["rounds"], do["rounds"])
        report["comm"] = {
            "bytes_sent": {"model_owner": mo["bytes_sent"], "data_owner": do["bytes_sent"]},
            "rounds": rounds,
            "offline": {"model_owner": model_owner["offline"], "data_owner": data_owner["offline"]},
        }
        report["estimates"] = estimate(seconds, rounds, max(mo["bytes_sent"], do["bytes_sent"]))
    else:
        from secinfer.he_report import PROTOCOL_ROUND_TRIPS, he_estimates

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

"""`secinfer eval`: losses and accuracy of a model on labelled data, backend vs plaintext.

The data set streams batch by batch (`secinfer.dataset`); per batch the backend and the
plaintext reference each give logits, and each chosen loss adds its per-example sum to a
running total (losses are means over examples: total / count at the end). Accuracy counts
argmax hits. Memory holds one batch and the totals.

Backends: `plain` and `approx` (float64 with the plan's approximations: the approximation
error of the model alone) run here; `mpc` runs the three parties as processes
(`secinfer.eval_party`: losses on shares, only the aggregate opened, to one party), and
the plaintext reference is computed here, where model and data both are (a local run).
`he` is not built yet.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from approximations import losses as L
from secinfer.dataset import Dataset, check_labels
from secinfer.errors import UserError
from secinfer.execute import Executor

LOCAL = ("plain", "approx")


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
    batch_size: int,
) -> dict[str, Any]:
    """Run `backend` and `plain` over `data`; the report's losses, accuracy and counts."""
    began = time.perf_counter()
    secure, plain = Totals(), Totals()
    bar = _bar(data.rows)
    for batch in data.batches(batch_size, loaded.input_names):
        loaded.check_inputs(batch.inputs)
        reference = Executor(graph, "plain").run(batch.inputs).outputs[0].double()
        check_labels(batch.labels, reference.shape[-1], plain.count)
        ours = (
            reference
            if backend == "plain"
            else Executor(graph, backend, plan).run(batch.inputs).outputs[0].double()
        )
        secure.add(ours, batch.labels, names, options)
        plain.add(reference, batch.labels, names, options)
        if bar is not None:
            bar.update(len(batch.labels))
    if bar is not None:
        bar.close()
    got, want = secure.means(), plain.means()
    return {
        "backend": backend,
        "examples": secure.count,
        "seconds": time.perf_counter() - began,
        "losses": {name: {"secure": got[name], "plain": want[name]} for name in names},
        "accuracy": {"secure": secure.correct / secure.count, "plain": plain.correct / plain.count},
    }


def _bar(total: int) -> Any:
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
    if "comm" in report:
        sent = report["comm"]["bytes_sent"]
        lines.append(
            f"revealed to the {report['reveal_to']} only (the aggregate); sent: model owner "
            f"{sent['model_owner'] / 1e6:.1f} MB, data owner {sent['data_owner'] / 1e6:.1f} MB, "
            f"{report['comm']['rounds']} rounds"
        )
    return "\n".join(lines)


def evaluate_mpc(
    loaded: Any,
    graph: Any,
    plan: Any,
    model_path: Any,
    data_path: Any,
    data: Dataset,
    names: list[str],
    options: L.LossOptions,
    batch_size: int,
    reveal_to: str,
    config_path: Any = None,
    trust_model: bool = False,
) -> dict[str, Any]:
    """The parties' private evaluation, with the plaintext reference beside it."""
    from secinfer.eval_party import Evaluation
    from secinfer.launch import run_local_evaluation

    evaluation = Evaluation(
        tuple(names), reveal_to, options.zloss_a, options.zloss_b, options.gce_q
    )
    aggregate, model_owner, data_owner, seconds = run_local_evaluation(
        model_path,
        data_path,
        evaluation,
        trust_model=trust_model,
        config=config_path,
        batch_size=batch_size,
    )
    reference = evaluate_local(loaded, graph, plan, "plain", data, names, options, batch_size)
    mo, do = model_owner["run"], data_owner["run"]
    return {
        "backend": "mpc",
        "examples": aggregate["examples"],
        "seconds": seconds,
        "reveal_to": reveal_to,
        "losses": {
            name: {"secure": aggregate["losses"][name], "plain": reference["losses"][name]["plain"]}
            for name in names
        },
        "accuracy": {"secure": aggregate["accuracy"], "plain": reference["accuracy"]["plain"]},
        "comm": {
            "bytes_sent": {"model_owner": mo["bytes_sent"], "data_owner": do["bytes_sent"]},
            "rounds": max(mo["rounds"], do["rounds"]),
            "offline": {"model_owner": model_owner["offline"], "data_owner": data_owner["offline"]},
        },
    }

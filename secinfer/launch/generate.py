"""Greedy generation with a key/value cache, on the local backends (`plain`, `approx`).

The prompt runs once through the decoder's prefill program; then each new token runs the
step program on one row, with the caches the previous run returned (`Executor.run`'s
`given`: they stay in the backend's own form). The next token is the argmax of the last
logits. `approx` runs the plan of the secure backend it stands for (`target`), and beside
it `plain` runs in lockstep on the same tokens: per step, whether plaintext greedy picks
the same token and how far the logits are, so the report says exactly where (and whether)
the approximations change the text.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secinfer import backends
from secinfer.backends.base import RunOptions
from secinfer.core.execute import Executor
from secinfer.core.graph import Graph, build_graph
from secinfer.core.prepare import prepare_graph
from secinfer.core.sampling import GREEDY, Sampling
from secinfer.load.decoder import Decoder

OnToken = Callable[[int, dict[str, Any]], None]
"""Called with each new token and its step's record as soon as it is known."""


@dataclass
class Generation:
    """What a generation produced and cost: the tokens, the prefill's record, one record
    per new token (seconds; error and agreement against plaintext where logits exist)."""

    backend: str
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    prefill: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str = "max_new_tokens"
    plan_for: str | None = None
    sampling: Sampling = GREEDY


_GRAPHS: weakref.WeakKeyDictionary[Any, Graph] = weakref.WeakKeyDictionary()


def graph_of(program: torch.export.ExportedProgram) -> Graph:
    """The graph of a decoder's program, built (decomposed) once per program object."""
    graph = _GRAPHS.get(program)
    if graph is None:
        graph = _GRAPHS[program] = build_graph(program)
    return graph


def greedy(logits: torch.Tensor) -> int:
    """The index of the largest logit (the first on ties, as torch.argmax)."""
    return int(torch.argmax(logits.reshape(-1)))


def generate_local(
    decoder: Decoder,
    prompt: torch.Tensor,
    max_new_tokens: int,
    backend: str,
    *,
    stop_token: int | None = None,
    config_path: str | Path | None = None,
    target: str | None = None,
    on_token: OnToken | None = None,
    sampling: Sampling = GREEDY,
) -> Generation:
    """Generation of up to `max_new_tokens` after `prompt` ((1, P) ids) on `backend`
    ("plain" or "approx"), stopping after `stop_token` when it comes (module docstring);
    each token picked by `sampling` (greedy by default; plain's token in lockstep by the
    same rule and noise)."""
    backends.load(backend)
    prompt_tokens = int(prompt.shape[1])
    decoder.check_length(prompt_tokens, max_new_tokens)
    first: list[tuple[torch.Tensor, ...]] = []
    later: list[tuple[torch.Tensor, ...]] = []
    if backend != "plain":  # plain approximates nothing: no calibration
        first, later = decoder.calibration_samples(prompt_tokens, max_new_tokens)
    prefill_graph, prefill_plan = prepare_graph(
        graph_of(decoder.prefill), backend, first, config_path, target
    )
    result = Generation(backend, prompt[0].tolist(), sampling=sampling)
    if backend != "plain":
        result.plan_for = prefill_plan.target
    runs = {"prefill": [Executor(prefill_graph, backend, prefill_plan)]}
    if backend != "plain":
        runs["prefill"].append(Executor(prefill_graph, "plain"))
    if max_new_tokens > 1:
        step_graph, step_plan = prepare_graph(
            graph_of(decoder.step), backend, later, config_path, target
        )
        runs["step"] = [Executor(step_graph, backend, step_plan)]
        if backend != "plain":
            runs["step"].append(Executor(step_graph, "plain"))
    caches: list[list[Any]] = [[] for _ in runs["prefill"]]
    record = _lockstep(runs["prefill"], [(prompt,)], caches, lambda x: sampling.pick(x, 0))
    logits = record.pop("logits")
    result.prefill = {key: record.pop(key) for key in ("seconds", "out_of_range")}
    for index in range(max_new_tokens):
        if index > 0:
            token_ids = torch.tensor([[result.tokens[-1]]])
            pick = functools.partial(sampling.pick, step=index)
            record = _lockstep(runs["step"], [(token_ids,)], caches, pick)
            logits = record.pop("logits")
        began = time.perf_counter()
        token = sampling.pick(logits, index)
        record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - began
        record["token"] = token
        result.tokens.append(token)
        result.steps.append(record)
        if on_token is not None:
            on_token(token, record)
        if stop_token is not None and token == stop_token:
            result.stopped_by = "stop_token"
            break
    return result


def generate_secure(
    backend: str,
    model: Path,
    prompt: torch.Tensor,
    max_new_tokens: int,
    options: RunOptions,
    *,
    stop_token: int | None = None,
    sampling: Sampling = GREEDY,
    decoder: Decoder | None = None,
) -> tuple[Generation, dict[str, Any]]:
    """With `decoder`, where the parties return the logits the data owner decrypted (`he`),
    each step's record gets their max abs error against plaintext on the same tokens.
    Greedy generation by a secure backend's parties as local processes (each token's
    progress line is echoed as it comes); the generation as the data owner recorded it,
    and both parties' records (their traffic: offline, prefill and every token)."""
    chosen = backends.get(backend)
    run = chosen.generate_parties(
        model, prompt, max_new_tokens, stop_token, options, sampling=sampling
    )
    record = run.data_owner
    result = Generation(backend, prompt[0].tolist(), plan_for=backend, sampling=sampling)
    result.tokens = [int(t) for t in run.output.reshape(-1)]
    result.prefill = dict(record.get("prefill", {}))
    result.steps = [dict(step) for step in record.get("steps", [])]
    if decoder is not None and run.logits is not None:
        reference = plain_logits(decoder, prompt, result.tokens)
        for step, ours, theirs in zip(result.steps, run.logits, reference, strict=True):
            step["max_abs_error"] = float(np.abs(ours - theirs.numpy()).max())
    if stop_token is not None and result.tokens and result.tokens[-1] == stop_token:
        result.stopped_by = "stop_token"
    parties = {"model_owner": run.model_owner, "data_owner": run.data_owner, "seconds": run.seconds}
    return result, parties


def plain_logits(decoder: Decoder, prompt: torch.Tensor, tokens: list[int]) -> list[torch.Tensor]:
    """The plaintext logits (float64, flat) before each of `tokens`, the prompt and the
    tokens before it given: what a secure run's logits are compared with."""
    prefill = Executor(graph_of(decoder.prefill), "plain")
    step = Executor(graph_of(decoder.step), "plain")
    logits, *cache = prefill.run((prompt,)).outputs
    out = [logits.double().reshape(-1)]
    for token in tokens[:-1]:
        logits, *cache = step.run((torch.tensor([[token]]), *cache)).outputs
        out.append(logits.double().reshape(-1))
    return out


def _lockstep(
    executors: list[Executor],
    inputs: list[tuple[torch.Tensor, ...]],
    caches: list[list[Any]],
    pick: Callable[[torch.Tensor], int],
) -> dict[str, Any]:
    """One prefill or step on each executor (the backend's first, then plain's), each with
    its own cache (`caches`, one list per executor, replaced by the new ones); the
    backend's logits, seconds and inputs outside its intervals, and against plain's: the
    logits' max abs error and the token plain picks."""
    record: dict[str, Any] = {}
    outputs = []
    for index, executor in enumerate(executors):
        cached = executor.graph.user_inputs[1:]  # the step's caches (none for the prefill)
        given = dict(zip(cached, caches[index], strict=True))
        began = time.perf_counter()
        run = executor.run(inputs[0], given=given)
        seconds = time.perf_counter() - began
        logits, *cache = run.outputs
        caches[index] = cache
        outputs.append(logits)
        if index == 0:
            record.update(seconds=seconds, logits=logits, out_of_range=run.out_of_range)
    if len(outputs) > 1:
        ours, plain = outputs[0].double(), outputs[1].double()
        record["max_abs_error"] = float((ours - plain).abs().max())
        record["plain_token"] = pick(plain)
    return record


__all__ = ["Generation", "OnToken", "generate_local", "generate_secure", "greedy", "plain_logits"]

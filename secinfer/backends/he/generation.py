"""Private generation under `he`: greedy decoding with the key/value cache kept encrypted.

  client  (data owner, the secret key) connects; the server's hello announces a
          generation and its vocabulary; the client sends the prompt's shape (1, P) and
          the new tokens at most, N;
  server  (model owner) checks the lengths against the model's positions, calibrates and
          plans its prefill and step programs for `he` at those lengths on its own sample
          prompts (`Decoder.calibration_samples`), chooses the CKKS parameters
          (`choice.choose_parameters` on the prefill, the value bound over prefill and step
          samples) and finds the Galois keys by a dry run of the prefill followed by the
          N - 1 steps on its caches (`inputs.rotation_plan`'s `follow`), so every rotation
          of every context length is covered; it sends the layouts, the step's token
          layout among them;
  client  makes the keys and sends the public context, then the prompt as encrypted
          one-hot rows;
  server  runs the prefill: sends the last logits (encrypted, flooded with --flood-bits)
          and keeps every layer's cache as ciphertexts;
  per new token: the client decrypts the logits, takes their argmax (the token), prints
          it, and answers "stop" (the N-th token, or its stop token) or "next" with the
          token's one-hot row encrypted in the step's layout; the server runs the step on
          it and on the caches, which come back one row longer, still encrypted.

What each learns: the client, the logits at every step (it decrypts them to pick the
token) and so the tokens; nothing of the weights beyond what the logits say (as any
query's output). The server, the lengths P and N, and how many tokens ran when the client
stops early (its stop token); never a token, a logit or a cached value (it holds no key
that decrypts). Refreshes show the client masked values only, as in a query
(`protocols.he.refresh`). Per token the step runs every linear layer on one row and
attention over the T cached rows (`protocols.he.products` for one row against the
cache), so its cost grows linearly with the context.

Records: the server writes `server.json` (a query's record for the prefill, and the
generation: prefill and per-token seconds, bytes and refreshes), the client `client.json`
(the same per token from its side), `tokens.npy` and `logits.npy` (what it decrypted, one
row a token: a local run compares them with plaintext on the same tokens).
"""

from __future__ import annotations

import copy
import dataclasses
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols.he import messages
from protocols.he.layout import Layout
from protocols.he.params import CkksParams
from protocols.he.tensor import HeTensor
from protocols.tls import Link
from secinfer.backends.he.channel import Channel, accept_client, connect, expect_hello, guarded
from secinfer.backends.he.client import ClientSession, open_client
from secinfer.backends.he.inputs import input_specs, layouts_for, server_input
from secinfer.backends.he.server import ServerSession, check_shapes, establish, server_record
from secinfer.backends.he.session import flood_record, flooded
from secinfer.core.execute import Executor, RunResult
from secinfer.core.graph import Graph, build_graph
from secinfer.core.plan import Plan
from secinfer.core.sampling import GREEDY, Sampling
from secinfer.errors import UserError
from secinfer.load.decoder import Decoder, token_text
from secinfer.report.files import write_json, write_npy


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """The model owner's choices for a generation (he-party's server options)."""

    config_path: Path | None = None
    allow_refresh: bool = True
    hiding_bits: float = 40.0
    network: str = "lan"
    packing: str = "auto"
    flood_bits: int = 0


@dataclasses.dataclass
class _Programs:
    """Both programs of the decoder, planned for `he` at the run's lengths."""

    graphs: dict[str, Graph]
    plans: dict[str, Plan]
    token_spec: dict[str, Any]  # the step's one-hot token input


# --- server -------------------------------------------------------------------------------
def serve_generation(
    decoder: Decoder,
    listener: socket.socket,
    out_dir: Path,
    settings: GenerationSettings,
    *,
    timeout: float,
    link: Link,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Accept one client and generate for it (module docstring); returns the record."""
    channel = accept_client(listener, timeout, link, log)
    with channel:
        try:
            return _serve(decoder, channel, out_dir, settings)
        except Exception as exc:
            channel.send_error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise


def _serve(
    decoder: Decoder, channel: Channel, out_dir: Path, settings: GenerationSettings
) -> dict[str, Any]:
    from secinfer.backends.he.kernels import check_he_plan

    began = time.perf_counter()
    graphs = {"prefill": build_graph(decoder.prefill), "step": build_graph(decoder.step)}
    specs = input_specs(graphs["prefill"], public_embedding=False)
    if [s["mode"] for s in specs] != ["one_hot"]:
        raise UserError("the decoder's prefill does not take one input of token ids")
    channel.send_json(
        {
            "kind": "hello",
            "inputs": specs,
            "timeout": channel.timeout,
            "generation": {"vocab": decoder.vocab},
        }
    )
    shapes = channel.recv_json()
    check_shapes(specs, shapes, None)
    prompt_tokens, new_tokens = _lengths(specs[0]["shape"], shapes.get("max_new_tokens"))
    decoder.check_length(prompt_tokens, new_tokens, "the model")
    channel.set_status(f"planning for a prompt of {prompt_tokens} and {new_tokens} new tokens")
    first, later = decoder.calibration_samples(prompt_tokens, new_tokens)
    plans = {
        "prefill": _plan(graphs["prefill"], first, settings.config_path),
        "step": _plan(graphs["step"], later, settings.config_path),
    }
    for name in graphs:
        check_he_plan(graphs[name], plans[name])
    token_spec = input_specs(graphs["step"], public_embedding=False)[0]
    token_spec["shape"] = [1, 1]
    programs = _Programs(graphs, plans, token_spec)
    choice = _choose(programs, specs, first, later, settings)
    _token_layout(programs, choice.params)
    channel.set_status("the keys' rotations: a dry run of the prefill and the steps")
    session = establish(
        graphs["prefill"], plans["prefill"], channel, specs, choice, settings.allow_refresh,
        packing=settings.packing,
        follow=_dry_steps(programs, new_tokens),
        announce=lambda _: {"step_input": programs.token_spec["layout"]},
    )  # fmt: skip
    generation = _generate(session, programs, new_tokens, settings.flood_bits)
    record = server_record(graphs["prefill"], session, generation.pop("result"))
    record["params_reason"] = choice.reason
    record["flood"] = flood_record(session, settings.flood_bits)
    record["plans"] = {name: plan.to_dict() for name, plan in plans.items()}
    record["generation"] = generation
    record["seconds"] = time.perf_counter() - began
    write_json(out_dir / "server.json", record)
    return record


def _lengths(shape: list[int], new_tokens: Any) -> tuple[int, int]:
    """The client's prompt length (shape (1, P)) and new tokens, checked."""
    if len(shape) != 2 or shape[0] != 1:
        raise UserError(f"the prompt has shape {tuple(shape)}; generate takes one, (1, P)")
    if not isinstance(new_tokens, int) or isinstance(new_tokens, bool) or new_tokens < 1:
        raise UserError(f"the client asked for {new_tokens!r} new tokens, not a positive count")
    return int(shape[1]), new_tokens


def _plan(graph: Graph, samples: list[tuple[torch.Tensor, ...]], config: Path | None) -> Plan:
    from secinfer.core.prepare import prepare_graph

    return prepare_graph(graph, "he", samples, config)[1]


def _choose(
    programs: _Programs,
    specs: list[dict[str, Any]],
    first: list[tuple[torch.Tensor, ...]],
    later: list[tuple[torch.Tensor, ...]],
    settings: GenerationSettings,
) -> Any:
    """The CKKS parameters: priced on the prefill (`choice.choose_parameters`), the
    refresh's value bound the larger of the prefill's and the step's over their samples
    (the step's caches are encrypted inputs too)."""
    from secinfer.backends.he.choice import choose_parameters, example_specs, value_bound

    graphs = programs.graphs
    bounds = [value_bound(graphs["prefill"], specs, first)]
    if later:
        step_specs = example_specs(graphs["step"], later[0], public_embedding=False)
        bounds.append(value_bound(graphs["step"], step_specs, later))
    bound = max(bounds, key=lambda b: b.bound)
    return choose_parameters(
        graphs["prefill"], programs.plans["prefill"], copy.deepcopy(specs), bound,
        hiding_bits=settings.hiding_bits, allow_refresh=settings.allow_refresh,
        network=settings.network, packing=settings.packing,
    )  # fmt: skip


def _token_layout(programs: _Programs, params: CkksParams) -> None:
    """The layout the client encrypts each new token's one-hot row in, set in its spec."""
    layouts_for(programs.graphs["step"], [programs.token_spec], None, params.slots)


def _dry_steps(programs: _Programs, new_tokens: int) -> Callable[[RunResult, Any], list[Any]]:
    """`rotation_plan`'s continuation: the N - 1 steps on the dry prefill's caches, each on
    a stand-in one-hot token, so the keys cover every context length of the run (and the
    token is sent in the layout its embedding product moves it to)."""
    from secinfer.backends.he.inputs import _DrySeeder

    def follow(result: RunResult, tensor: Callable[[Layout], HeTensor]) -> list[Any]:
        graph = programs.graphs["step"]
        executor = Executor(graph, "he", programs.plans["step"], seeder=_DrySeeder())
        _, *cache = result.outputs
        layout = Layout.from_dict(programs.token_spec["layout"])
        sent = []
        for _ in range(new_tokens - 1):
            token = tensor(layout)
            sent.append((programs.token_spec, token))
            given = _given(graph, cache, server_input(programs.token_spec, token))
            _, *cache = executor.run((), given=given).outputs
        return sent

    return follow


def _given(graph: Graph, cache: list[Any], token: Any) -> dict[str, Any]:
    """A step's user inputs by name: the token, then the caches."""
    names = graph.user_inputs
    return {names[0]: token, **dict(zip(names[1:], cache, strict=True))}


def _generate(
    session: ServerSession, programs: _Programs, new_tokens: int, flood_bits: int
) -> dict[str, Any]:
    """The prefill, then a step per "next" from the client (module docstring)."""
    channel = session.channel
    step_session = dataclasses.replace(
        session, graph=programs.graphs["step"], plan=programs.plans["step"]
    )
    layout = Layout.from_dict(programs.token_spec["layout"])
    prompt_tokens = int(session.specs[0]["shape"][1])
    mark = _Mark(session)
    session.step = "prefill: "
    result = session.run(session.receive_inputs())
    logits, *cache = result.outputs
    _send_logits(session, logits, flood_bits)
    prefill = mark.take()
    steps: list[dict[str, Any]] = []
    for index in range(1, new_tokens + 1):
        message = channel.recv_json()
        if message.get("kind") == "stop":
            break
        if message.get("kind") != "next" or index == new_tokens:
            raise messages.MessageError(
                f"expected the client's next or stop after token {index}, got "
                f"{message.get('kind')!r} (the run has {new_tokens} tokens)"
            )
        step_session.step = f"token {index + 1}: "
        token = server_input(programs.token_spec, step_session.receive_tensor(layout))
        run = step_session.run((), given=_given(programs.graphs["step"], cache, token))
        logits, *cache = run.outputs
        _send_logits(step_session, logits, flood_bits)
        steps.append({**mark.take(), "context": prompt_tokens + index})
    return {
        "prompt_tokens": prompt_tokens,
        "max_new_tokens": new_tokens,
        "steps_run": len(steps),
        "prefill": prefill,
        "steps": steps,
        "result": result,
    }


def _send_logits(session: ServerSession, logits: Any, flood_bits: int) -> None:
    if not isinstance(logits, HeTensor):
        raise UserError("the decoder's logits do not depend on the encrypted tokens")
    logits.ensure_level(0)
    if flood_bits:
        logits = flooded(session, logits, flood_bits)
    session.channel.set_status("sending the logits")
    session.send_tensor("logits", logits)


class _Mark:
    """Seconds, bytes and refreshes since the last `take`."""

    def __init__(self, session: ServerSession) -> None:
        self.session = session
        self.last = self._now()

    def _now(self) -> dict[str, float]:
        counter, refresher = self.session.channel.counter, self.session.refresher
        return {
            "seconds": time.perf_counter(),
            "bytes_sent": counter.bytes_sent,
            "bytes_received": counter.bytes_received,
            "refreshes": refresher.stats.refreshes if refresher else 0,
            "rotations": self.session.engine.cost.rotations,
        }

    def take(self) -> dict[str, Any]:
        now = self._now()
        delta = {k: now[k] - self.last[k] for k in now}
        self.last = now
        return {k: v if k == "seconds" else int(v) for k, v in delta.items()}


# --- client -------------------------------------------------------------------------------
def generate(
    address: tuple[str, int],
    prompt: torch.Tensor,
    max_new_tokens: int,
    stop_token: int | None,
    out_dir: Path,
    *,
    timeout: float,
    link: Link,
    sampling: Sampling | None = None,
    tokenizer: Any = None,
) -> list[int]:
    """The client's side (module docstring): `prompt` (1, P) ids, each token picked by
    `sampling` from the decrypted logits (None: greedy); writes tokens.npy and client.json,
    and a progress line per token on stderr (with its text when a `tokenizer` is given);
    returns the tokens."""
    channel = connect(address, timeout, link)
    rule = sampling or GREEDY
    return guarded(
        channel,
        lambda: _generate_client(
            channel, prompt, max_new_tokens, stop_token, out_dir, rule, tokenizer
        ),
    )


def _generate_client(
    channel: Channel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    stop_token: int | None,
    out_dir: Path,
    sampling: Sampling,
    tokenizer: Any,
) -> list[int]:
    began = time.perf_counter()
    hello = expect_hello(channel)
    announced = hello.get("generation")
    if not isinstance(announced, dict):
        raise UserError(
            "the server answers queries, not a generation: start it with he-party --generate"
        )
    vocab = announced.get("vocab")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise messages.MessageError(f"the server announced a vocabulary of {vocab!r}")
    if int(prompt.max()) >= vocab:
        raise UserError(
            f"--input: token id {int(prompt.max())} outside the vocabulary 0..{vocab - 1}"
        )
    if stop_token is not None and not 0 <= stop_token < vocab:
        raise UserError(f"--stop-token {stop_token}: not a token id of the model (0..{vocab - 1})")
    client = open_client(channel, (prompt,), {"max_new_tokens": max_new_tokens})
    step_layout = client.layouts.get("step_input")
    if not isinstance(step_layout, dict):
        raise messages.MessageError("the server's layouts name no layout for the new tokens")
    mark = _ClientMark(client)
    channel.set_status("encrypting the prompt")
    client.send_inputs((prompt,))
    tokens: list[int] = []
    decrypted: list[np.ndarray] = []  # the client's own: it picks each token from them
    records: list[dict[str, Any]] = []
    prefill: dict[str, Any] = {}
    for index in range(max_new_tokens):
        message = client.await_message("logits")
        logits = client.receive_values(message, "the logits").reshape(-1)
        token = sampling.pick(torch.from_numpy(logits), index)
        decrypted.append(logits)
        tokens.append(token)
        if index == 0:  # the prefill's traffic; the first token is a local argmax
            prefill = mark.take()
            costs = {"seconds": 0.0, "bytes_sent": 0, "bytes_received": 0, "refreshes": 0}
        else:
            costs = mark.take()
        record = {**costs, "token": token, "context": int(prompt.shape[1]) + index}
        records.append(record)
        _progress(index + 1, max_new_tokens, token, record if index else prefill, tokenizer)
        if (stop_token is not None and token == stop_token) or index + 1 == max_new_tokens:
            channel.send_json({"kind": "stop"})
            break
        channel.send_json({"kind": "next"})
        one_hot = np.zeros((1, 1, vocab))
        one_hot[0, 0, token] = 1.0
        channel.set_status(f"token {index + 2}: encrypting the last token")
        client.send_values(one_hot, step_layout)
    write_npy(out_dir / "tokens.npy", np.asarray(tokens, dtype=np.int64))
    write_npy(out_dir / "logits.npy", np.stack(decrypted))
    record = {
        **client.record(began),
        "prompt_tokens": int(prompt.shape[1]),
        "tokens": tokens,
        "prefill": prefill,
        "steps": records,
    }
    write_json(out_dir / "client.json", record)
    return tokens


class _ClientMark:
    """Seconds and bytes since the last `take`, on the client's side."""

    def __init__(self, client: ClientSession) -> None:
        self.client = client
        self.last = self._now()

    def _now(self) -> dict[str, float]:
        counter = self.client.channel.counter
        return {
            "seconds": time.perf_counter(),
            "bytes_sent": counter.bytes_sent,
            "bytes_received": counter.bytes_received,
            "refreshes": self.client.refreshes,
        }

    def take(self) -> dict[str, Any]:
        now = self._now()
        delta = {k: now[k] - self.last[k] for k in now}
        self.last = now
        return {k: v if k == "seconds" else int(v) for k, v in delta.items()}


def _progress(count: int, total: int, token: int, record: dict[str, Any], tokenizer: Any) -> None:
    print(
        f"client progress: token {count}/{total}: {token}{token_text(tokenizer, token)} "
        f"({record['seconds']:.2f} s, "
        f"{record['bytes_sent'] / 1e6:.2f} MB sent, {record['bytes_received'] / 1e6:.2f} MB "
        f"received, {record['refreshes']} refreshes)",
        file=sys.stderr,
        flush=True,
    )


__all__ = ["GenerationSettings", "generate", "serve_generation"]

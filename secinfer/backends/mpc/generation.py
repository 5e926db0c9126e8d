"""Private generation under `mpc`: greedy decoding with the key/value cache kept as shares.

  data owner   sends the run's public lengths (prompt tokens, new tokens at most);
  model owner  loads the decoder (`secinfer.load.decoder`), calibrates and plans its
               prefill and step programs at those lengths on its own sample prompts, and
               announces both architectures and plans (checked by digest, as a query's);
  both         offline, before the prompt exists: share the weights once for both
               programs and open their Beaver masks once (`Seeder.prepare`);
               prefill: the prompt as one-hot shares -> the last logits and every layer's
               cache, all shares;
               per new token: the one-hot argmax of the logits on shares
               (`protocols.mpc.argmax`), its index opened to the data owner alone, who
               answers "next" or "stop"; then the step program on that one-hot (never
               opened: it feeds the embedding product as the prompt's one-hot rows do)
               and the caches, which come back one row longer, still shared.

What each learns: the data owner, the token ids (and nothing of the weights); the model
owner, the lengths, and how many tokens ran when the data owner stops early (a stop
token); neither sees a logit. Per token the step runs every linear layer on one row and
attention over the cached rows, so its bytes grow linearly with the context.

Records: each computing party writes `<role>.json` (the setup: lengths, architectures,
plans and digest; the offline phase; the prefill and every token's traffic and seconds
apart); the data owner also `tokens.npy`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols.mpc.meter import Meter, Traffic
from protocols.mpc.reveal import reveal_to
from protocols.mpc.runtime import PartySettings, Role, start_party, stop_party
from secinfer.backends.mpc import wire
from secinfer.backends.mpc.kernels.values import OneHot
from secinfer.backends.mpc.party import (
    PeerAborted,
    Seeder,
    await_agreement,
    node_costs,
    nonlinear_functions,
    session_digest,
)
from secinfer.core import architecture
from secinfer.core.execute import Executor
from secinfer.core.graph import Graph, build_graph
from secinfer.core.options import MPC_COMPARISONS
from secinfer.core.plan import Plan
from secinfer.core.prepare import prepare_graph
from secinfer.core.sampling import GREEDY, Sampling
from secinfer.core.token_ids import token_id_inputs
from secinfer.errors import UserError
from secinfer.load.checks import input_specs
from secinfer.report.files import write_json, write_npy

PROGRAMS = ("prefill", "step")


@dataclass
class Session:
    """What both computing parties hold once the session is agreed: the two graphs and
    plans, the lengths, and the shared weights (after the offline phase)."""

    graphs: dict[str, Graph]
    plans: dict[str, Plan]
    prompt_tokens: int
    max_new_tokens: int
    seeder: Seeder
    offline: dict[str, Any]


def model_owner(settings: PartySettings, model: Path, config_path: Path | None, out: Path) -> None:
    """The model owner's side (module docstring); writes model-owner.json."""
    from secinfer.load.decoder import load_decoder

    decoder = load_decoder(model)
    graphs = {"prefill": build_graph(decoder.prefill), "step": build_graph(decoder.step)}
    start_party(Role.MODEL_OWNER, settings)
    meter = Meter().install()
    try:
        lengths = wire.receive_json(src=Role.DATA_OWNER)
        if "error" in lengths:
            raise PeerAborted(f"the data owner gave up: {lengths['error']}")
        try:
            prompt_tokens, new_tokens = _lengths(lengths)
            decoder.check_length(prompt_tokens, new_tokens, "the model")
        except UserError as exc:
            wire.send_json({"error": str(exc)}, src=Role.MODEL_OWNER)
            raise
        first, later = decoder.calibration_samples(prompt_tokens, new_tokens)
        plans = {
            "prefill": prepare_graph(graphs["prefill"], "mpc", first, config_path)[1],
            "step": prepare_graph(graphs["step"], "mpc", later, config_path)[1],
        }
        meta = {
            "model": model.name,
            "plans": {k: p.to_dict() for k, p in plans.items()},
            "prompt_tokens": prompt_tokens,
            "max_new_tokens": new_tokens,
        }
        public = {name: _describe(graphs[name], getattr(decoder, name)) for name in PROGRAMS}
        wire.send_json({"ok": True}, src=Role.MODEL_OWNER)
        for name in PROGRAMS:
            wire.send_json(public[name], src=Role.MODEL_OWNER)
        wire.send_json(meta, src=Role.MODEL_OWNER)
        await_agreement(public, meta)
        setup = meter.snapshot().to_dict()  # the lengths, architectures, plans and digest
        session = _offline(graphs, plans, prompt_tokens, new_tokens, Role.MODEL_OWNER, meter)
        record = {**_generate(session, Role.MODEL_OWNER, meter, None), "setup": setup}
        record["plans"] = meta["plans"]
    finally:
        meter.remove()
        stop_party()
    write_json(out / f"{Role.MODEL_OWNER.label}.json", record)


def data_owner(
    settings: PartySettings,
    prompt: torch.Tensor,
    max_new_tokens: int,
    stop_token: int | None,
    out: Path,
    sampling: Sampling | None = None,
    tokenizer: Any = None,
) -> None:
    """The data owner's side (module docstring): `prompt` (1, P) ids, each token picked by
    `sampling` (None: greedy); writes tokens.npy and data-owner.json, and a progress line
    per token on stderr (with its text when a `tokenizer` is given)."""
    start_party(Role.DATA_OWNER, settings)
    meter = Meter().install()
    try:
        wire.send_json(
            {"prompt_tokens": int(prompt.shape[1]), "max_new_tokens": max_new_tokens},
            src=Role.DATA_OWNER,
        )
        reply = wire.receive_json(src=Role.MODEL_OWNER)
        if "error" in reply:
            raise UserError(str(reply["error"]))  # the lengths were the data owner's choice
        received = {name: wire.receive_bytes(src=Role.MODEL_OWNER) for name in PROGRAMS}
        meta_bytes = wire.receive_bytes(src=Role.MODEL_OWNER)
        try:
            public = {name: wire.parse_json(data) for name, data in received.items()}
            meta = wire.parse_json(meta_bytes)
            graphs = {name: architecture.rebuild(public[name]).graph for name in PROGRAMS}
            plans = {
                name: Plan.from_peer(meta["plans"][name], nonlinear_functions(graphs[name]))
                for name in PROGRAMS
            }
            _check_vocabulary(graphs, prompt, stop_token)
        except (architecture.ArchitectureError, KeyError, TypeError, ValueError) as exc:
            message = f"the model owner sent architectures or plans this data owner refuses: {exc}"
            wire.send_json({"error": message}, src=Role.DATA_OWNER)
            raise PeerAborted(message) from None
        except UserError as exc:
            wire.send_json({"error": str(exc)}, src=Role.DATA_OWNER)
            raise
        wire.send_json({"digest": session_digest(public, meta)}, src=Role.DATA_OWNER)
        setup = meter.snapshot().to_dict()  # the lengths, architectures, plans and digest
        session = _offline(
            graphs, plans, int(prompt.shape[1]), max_new_tokens, Role.DATA_OWNER, meter
        )
        mine = (prompt, stop_token, sampling or GREEDY, tokenizer)
        record = _generate(session, Role.DATA_OWNER, meter, mine)
        record["setup"] = setup
    finally:
        meter.remove()
        stop_party()
    write_npy(out / "tokens.npy", np.asarray(record["tokens"], dtype=np.int64))
    write_json(out / f"{Role.DATA_OWNER.label}.json", record)


def _lengths(message: dict[str, Any]) -> tuple[int, int]:
    """The data owner's lengths, checked: positive integers."""
    prompt_tokens, new_tokens = message.get("prompt_tokens"), message.get("max_new_tokens")
    for name, value in (("prompt tokens", prompt_tokens), ("new tokens", new_tokens)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PeerAborted(f"the data owner sent {name} {value!r}, not a positive integer")
    return int(prompt_tokens), int(new_tokens)  # type: ignore[arg-type]


def _describe(graph: Graph, program: torch.export.ExportedProgram) -> dict[str, Any]:
    names = list(program.graph_signature.user_inputs)
    return architecture.describe(graph, input_specs(program, names), names, "logits")


def _check_vocabulary(
    graphs: dict[str, Graph], prompt: torch.Tensor, stop_token: int | None
) -> None:
    """UserError unless the prompt's ids and `stop_token` are ids of the vocabulary that
    both programs take (ValueError for programs that take none, or two)."""
    sizes = {size for graph in graphs.values() for size in token_id_inputs(graph).values()}
    if len(sizes) != 1:
        raise ValueError("the programs do not take token ids of one vocabulary")
    vocab = sizes.pop()
    if int(prompt.max()) >= vocab:
        raise UserError(
            f"--input: token id {int(prompt.max())} outside the vocabulary 0..{vocab - 1}"
        )
    if stop_token is not None and not 0 <= stop_token < vocab:
        raise UserError(f"--stop-token {stop_token}: not a token id of the model (0..{vocab - 1})")


def _offline(
    graphs: dict[str, Graph],
    plans: dict[str, Plan],
    prompt_tokens: int,
    new_tokens: int,
    role: Role,
    meter: Meter,
) -> Session:
    """Share the weights once for both programs and open their masks once."""
    before = meter.snapshot()
    began = time.perf_counter()
    seeder = Seeder(role, token_id_inputs(graphs["prefill"]))
    opened = seeder.prepare(*graphs.values())
    offline = {
        **(meter.snapshot() - before).to_dict(),
        "seconds": time.perf_counter() - began,
        "weights_opened": opened,
    }
    return Session(graphs, plans, prompt_tokens, new_tokens, seeder, offline)


def _generate(
    session: Session,
    role: Role,
    meter: Meter,
    mine: tuple[torch.Tensor, int | None, Sampling, Any] | None,
) -> dict[str, Any]:
    """The prefill, then a token at a time until the data owner stops (both parties run
    this; `mine` is the data owner's prompt, stop token, sampling and tokenizer, None on
    the model owner). Before each argmax the data owner shares its Gumbel noise (`Sampling.noise`:
    zeros when greedy, so the model owner cannot tell which): a sharing from its side,
    no traffic, added to the shared logits."""
    from protocols.mpc.argmax import argmax_one_hot, index_of

    prefill, step = (
        Executor(session.graphs[name], "mpc", session.plans[name], seeder=session.seeder,
                 meter=meter.snapshot)
        for name in PROGRAMS
    )  # fmt: skip
    prompt = mine[0] if mine else torch.zeros(1, session.prompt_tokens, dtype=torch.int64)
    cached = session.graphs["step"].user_inputs[1:]
    tokens: list[int] = []
    records: list[dict[str, Any]] = []
    before, began = meter.snapshot(), time.perf_counter()
    run = prefill.run((prompt,))
    nodes = node_costs(run)
    prefill_record = {
        **(meter.snapshot() - before).to_dict(),
        "seconds": time.perf_counter() - began,
    }
    logits, *cache = run.outputs
    hot: Any = None  # the last token's one-hot, shared
    for index in range(session.max_new_tokens):
        if index > 0:
            before, began = meter.snapshot(), time.perf_counter()
            given = dict(zip(cached, cache, strict=True))
            given[session.graphs["step"].user_inputs[0]] = OneHot(hot.reshape(1, 1, -1))
            run = step.run((), given=given)
            logits, *cache = run.outputs
            if index == 1:
                nodes = nodes + node_costs(run)
        else:
            before, began = meter.snapshot(), time.perf_counter()  # the argmax of the prefill's
        hot = argmax_one_hot(logits + _noise(mine, index, tuple(logits.size())), argmax_bits())
        token = reveal_to(index_of(hot), int(Role.DATA_OWNER))
        traffic: Traffic = meter.snapshot() - before
        record = {
            **traffic.to_dict(),
            "seconds": time.perf_counter() - began,
            "context": session.prompt_tokens + index,
        }
        if mine is not None:
            assert token is not None
            value = round(float(token.reshape(-1)[0]))
            tokens.append(value)
            record["token"] = value
            _progress(index + 1, session.max_new_tokens, value, record, mine[3])
            stop = mine[1] is not None and value == mine[1]
            last = stop or index + 1 == session.max_new_tokens
            wire.send_json({"next": not last}, src=Role.DATA_OWNER)
        else:
            last = not wire.receive_json(src=Role.DATA_OWNER).get("next", False)
        records.append(record)
        if last:
            break
    return {
        "role": role.label,
        "prompt_tokens": session.prompt_tokens,
        "tokens": tokens,
        "offline": session.offline,
        "prefill": prefill_record,
        "steps": records,
        "seconds": prefill_record["seconds"] + sum(r["seconds"] for r in records),
        "nodes": nodes,
    }


def argmax_bits() -> int | None:
    """The argmax's comparisons: FSS keys over the whole ring when the default comparisons
    are FSS (`options.MPC_COMPARISONS`; logits and their sampling noise have no calibrated
    bound), else None (CrypTen's)."""
    from protocols.mpc.fss_compare import RING_BITS

    return RING_BITS if MPC_COMPARISONS == "fss" else None


def _noise(mine: tuple[Any, ...] | None, index: int, shape: tuple[int, ...]) -> Any:
    """The data owner's noise for token `index`, shared from its side (zeros from the model
    owner's: it contributes no value, only its pseudo-random share)."""
    from protocols.mpc.crypten_setup import import_crypten

    vocab = shape[-1]
    noise = mine[2].noise(index, vocab).float() if mine else torch.zeros(vocab)
    return import_crypten().cryptensor(noise.reshape(shape), src=int(Role.DATA_OWNER))


def _progress(count: int, total: int, token: int, record: dict[str, Any], tokenizer: Any) -> None:
    from secinfer.load.decoder import token_text

    print(
        f"data-owner progress: token {count}/{total}: {token}{token_text(tokenizer, token)} "
        f"({record['seconds']:.2f} s, "
        f"{record['bytes_sent'] / 1e6:.2f} MB sent, {record['rounds']} rounds)",
        file=sys.stderr,
        flush=True,
    )


__all__ = ["data_owner", "model_owner"]

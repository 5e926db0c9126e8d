"""`secinfer party --role ...`: check one party's arguments, load what it owns, run it.

Failures of the connection (a peer that never connects, vanishes or times out) become one
`PartyError` line naming the role and the rendezvous; the user's own mistakes stay
`UserError`s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secinfer.errors import PartyError, UserError

if TYPE_CHECKING:
    from secinfer.core.architecture import Architecture

_CONNECTION_WORDS = ("timed out", "timeout", "connection", "closed", "reset", "refused", "peer")


def _channel(role: str, provider: str, identity: Path | None, insecure: bool) -> str | None:
    """The identity directory of this party's TLS links (checked now), or None for gloo in
    clear with `insecure` (the warning goes to stderr). Neither, or both: a `UserError`."""
    import sys

    from protocols import tls
    from protocols.mpc.runtime import Role, peers_of

    if identity is not None and insecure:
        raise UserError("give --identity DIR or --insecure-channel, not both")
    if insecure:
        print(tls.INSECURE_WARNING, file=sys.stderr, flush=True)
        return None
    if identity is None:
        raise UserError(
            "party needs --identity DIR: make keys with `secinfer keys --out DIR --role "
            f"{role}` (each party keeps its .key and gets the others' .crt), or pass "
            "--insecure-channel"
        )
    try:
        tls.load_identity(identity, role, peers_of(Role.from_label(role), provider))
    except tls.IdentityError as exc:
        raise UserError(str(exc)) from None
    return str(identity)


def _settings(
    rendezvous: str,
    timeout: float,
    provider: str,
    precision_bits: int,
    evaluation: Any = None,
    identity: str | None = None,
    generate: bool = False,
) -> Any:
    import json

    from protocols.mpc.runtime import PartySettings

    if not rendezvous.startswith(("tcp://", "file://")):
        raise UserError(f"--rendezvous {rendezvous}: give tcp://HOST:PORT")
    job = "generate" if generate else "query"
    if evaluation is not None:
        job = json.dumps({"evaluation": evaluation.to_dict()}, sort_keys=True)
    try:
        return PartySettings(rendezvous, timeout, provider, precision_bits, job, identity)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def main_for_role(
    role: str,
    *,
    rendezvous: str,
    model: Path | None,
    trust_model: bool,
    config_path: Path | None,
    input_paths: tuple[Path, ...],
    out_dir: Path,
    timeout: float,
    provider: str,
    precision_bits: int,
    evaluation: Any = None,
    eval_data: Path | None = None,
    batch_size: int = 64,
    identity: Path | None = None,
    insecure_channel: bool = False,
    generate: bool = False,
    max_new_tokens: int = 16,
    stop_token: int | None = None,
    sampling: Any = None,
    tokenizer: Path | None = None,
) -> None:
    """Run one party; with `evaluation` (an `eval_party.Evaluation`) a private evaluation
    on the data owner's labelled `eval_data` instead of queries; with `generate`, greedy
    generation after the data owner's prompt (`--input` token ids), `max_new_tokens` at
    most, stopping after its `stop_token`. Its links are mutual TLS with the identity in
    `identity`, or gloo in clear with `insecure_channel`."""
    from protocols import tls
    from protocols.mpc import rendezvous as meeting
    from protocols.mpc.dealer import DealerError
    from protocols.mpc.runtime import Role, run_dealer

    channel = _channel(role, provider, identity, insecure_channel)
    if generate and evaluation is not None:
        raise UserError("give --generate or --loss (an evaluation), not both")
    settings = _settings(
        rendezvous, timeout, provider, precision_bits, evaluation, channel, generate
    )
    party = Role.from_label(role)
    if party is not Role.DEALER and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: no such directory")
    try:
        if party is Role.MODEL_OWNER and rendezvous.startswith("tcp://"):
            meeting.claim(rendezvous)  # a port in use fails now, not after the model loads
        if party is Role.DEALER:
            run_dealer(settings)
        elif generate:
            _generation(
                party,
                settings,
                model,
                config_path,
                input_paths,
                out_dir,
                max_new_tokens,
                stop_token,
                sampling,
                tokenizer,
            )
        elif evaluation is not None and party is Role.MODEL_OWNER:
            _eval_model_owner(settings, model, trust_model, config_path, evaluation, out_dir)
        elif evaluation is not None:
            _eval_data_owner(settings, eval_data, evaluation, batch_size, out_dir)
        elif party is Role.MODEL_OWNER:
            _model_owner(settings, model, trust_model, config_path, out_dir)
        else:
            _data_owner(settings, input_paths, out_dir)
    except (UserError, PartyError):
        raise
    except DealerError as exc:  # the dealer link: a refused request or reply, a failed run
        raise PartyError(f"{role}: {exc}") from None
    except meeting.RendezvousBusy as exc:
        raise UserError(f"--rendezvous {rendezvous}: {exc}") from None
    except meeting.SettingsMismatch as exc:
        raise UserError(f"{role}: {exc}") from None
    except tls.AuthenticationError as exc:  # a peer that cannot prove its role
        raise PartyError(f"{role}: {exc}") from None
    except meeting.NothingListening as exc:
        raise PartyError(
            f"{role}: no answer from the other parties at {rendezvous} ({exc}); "
            f"check that all three roles run and reach it within --timeout {timeout:g} s"
        ) from None
    except meeting.RendezvousTimeout as exc:
        raise PartyError(
            f"{role}: {exc}; check that all three roles run and reach {rendezvous}"
        ) from None
    except RuntimeError as exc:
        text = _first_line(exc)
        if any(word in text.lower() for word in _CONNECTION_WORDS):
            raise PartyError(
                f"{role}: no answer from the other parties at {rendezvous} ({text[:160]}); "
                f"check that all three roles run and reach it within --timeout {timeout:g} s"
            ) from None
        raise


def _first_line(exc: BaseException) -> str:
    """The first line of what went wrong: a kernel's failure (`ExecutionError`, naming the
    node) as its cause, without gloo's source location ("[.../pair.cc:553] ")."""
    from secinfer.core.execute import ExecutionError

    while isinstance(exc, ExecutionError) and exc.__cause__ is not None:
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^\[[^\]]*:\d+\]\s*", "", lines[0] if lines else type(exc).__name__)
    return text.split(". This is typically")[0]  # gloo's advice to read the peer's logs


def _generation(
    party: Any,
    settings: Any,
    model: Path | None,
    config_path: Path | None,
    input_paths: tuple[Path, ...],
    out_dir: Path,
    max_new_tokens: int,
    stop_token: int | None,
    sampling: Any,
    tokenizer: Path | None,
) -> None:
    """One computing party of a generation (`secinfer.backends.mpc.generation`); the data
    owner picks each token by `sampling` (None: greedy)."""
    from protocols.mpc.runtime import Role
    from secinfer.backends.mpc import generation

    if party is Role.MODEL_OWNER:
        if model is None:
            raise UserError("--role model-owner --generate needs --model DIR (a causal LM)")
        generation.model_owner(settings, model, config_path, out_dir)
        return
    if len(input_paths) != 1:
        raise UserError("--role data-owner --generate needs one --input IDS.npy (the prompt)")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: give at least 1")
    from secinfer.load.decoder import open_tokenizer, read_prompt_ids

    prompt = read_prompt_ids(input_paths[0])
    text = open_tokenizer(tokenizer)
    generation.data_owner(settings, prompt, max_new_tokens, stop_token, out_dir, sampling, text)


def _loaded_for_mpc(model: Path | None, trust_model: bool) -> Any:
    from secinfer import load

    if model is None:
        raise UserError("--role model-owner needs --model FILE")
    loaded = load.load_model(model, trust_model=trust_model)
    if loaded.program is None:
        raise UserError(
            f"{model}: a {loaded.source} model records no input shapes; export it with "
            "torch.export for the mpc backend"
        )
    return loaded


def _eval_model_owner(
    settings: Any,
    model: Path | None,
    trust_model: bool,
    config_path: Path | None,
    evaluation: Any,
    out_dir: Path,
) -> None:
    from secinfer.backends.mpc.evaluation import eval_model_owner
    from secinfer.core.prepare import prepare

    loaded = _loaded_for_mpc(model, trust_model)
    graph, plan = prepare(loaded.program, "mpc", loaded.calibration_samples(), config_path)
    classes = int(graph.program.graph.output_node().args[0][0].meta["val"].shape[-1])
    meta = {"input_names": loaded.input_names, "classes": classes}
    eval_model_owner(settings, loaded.program, plan, meta, evaluation, out_dir)


def _eval_data_owner(
    settings: Any, data: Path | None, evaluation: Any, batch_size: int, out_dir: Path
) -> None:
    from secinfer.backends.mpc.evaluation import eval_data_owner
    from secinfer.backends.mpc.limits import mpc_limit
    from secinfer.load.dataset import open_dataset

    if data is None:
        raise UserError("--role data-owner needs --eval-data DATA for an evaluation")
    dataset = open_dataset(data, limit=mpc_limit(settings.precision_bits))

    def read_batches(public: Architecture, meta: dict[str, Any]) -> Any:
        from secinfer.load.dataset import batch_shape

        first = public.inputs[0] if public.inputs else None
        shape = batch_shape(first.dims[0] if first is not None and first.dims else None, batch_size)
        for batch in dataset.batches(shape, public.input_names):
            public.check_inputs(batch.inputs, data)
            yield batch.inputs, batch.labels

    eval_data_owner(settings, read_batches, evaluation, out_dir)


def _model_owner(
    settings: Any,
    model: Path | None,
    trust_model: bool,
    config_path: Path | None,
    out_dir: Path,
) -> None:
    from secinfer import load
    from secinfer.backends.mpc.party import run_model_owner
    from secinfer.core.prepare import prepare

    if model is None:
        raise UserError("--role model-owner needs --model FILE")
    loaded = load.load_model(model, trust_model=trust_model)
    samples = loaded.calibration_samples()
    if loaded.program is None:
        raise UserError(
            f"{model}: a {loaded.source} model records no input shapes; export it with "
            "torch.export for the mpc backend"
        )
    _, plan = prepare(loaded.program, "mpc", samples, config_path)
    meta = {
        "model": model.name,
        "input_names": loaded.input_names,
        "output_name": loaded.output_name,
    }
    run_model_owner(settings, loaded.program, plan, meta, out_dir)


def _data_owner(settings: Any, input_paths: tuple[Path, ...], out_dir: Path) -> None:
    from secinfer import load
    from secinfer.backends.mpc.limits import mpc_limit
    from secinfer.backends.mpc.party import run_data_owner
    from secinfer.load.values import check_values

    if not input_paths:
        raise UserError(
            "--role data-owner needs --input FILE (.npy or .pt; repeat it for several queries)"
        )
    for path in input_paths:
        if not path.is_file():
            raise UserError(f"--input {path}: no such file")

    def read_queries(public: Architecture, meta: dict[str, Any]) -> list:
        queries = []
        for path in input_paths:
            names = load.LoadedModel(
                None, "architecture", path, (), public.input_names, public.output_name
            )
            inputs = load.read_input(path, names)
            public.check_inputs(inputs, path)
            check_values(inputs, public.input_names, mpc_limit(settings.precision_bits))
            queries.append(inputs)
        return queries

    run_data_owner(settings, read_queries, out_dir)


__all__ = ["main_for_role"]

"""`secinfer he-party --role server|client`: check one side's arguments, load what it owns, run.

The server (model owner) listens on --port; the client (data owner) connects to --connect
HOST:PORT with its --input. Both run over mutual TLS with the identities in --identity DIR
(the server as the model owner, the client as the data owner: `protocols.tls`), or over a
plain socket with --insecure-channel (a warning is printed). Connection failures become one
`PartyError` line; the user's own mistakes (missing or bad key files included) stay
`UserError`s.
"""

from __future__ import annotations

import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import torch

from protocols import tls
from protocols.he.messages import MessageError, PeerError, PeerTimeout
from protocols.he.refresh import DEFAULT_HIDING_BITS
from secinfer.errors import PartyError, UserError


def he_link(role: str, identity: Path | None, insecure: bool) -> tls.Link:
    """The link of he-party's `role` (server or client): its identity in `identity` with the
    peer's pinned certificate, or with `insecure` a plain socket (the warning goes to
    stderr). Neither, or both: a `UserError` saying how to make keys."""
    if identity is not None and insecure:
        raise UserError("give --identity DIR or --insecure-channel, not both")
    if insecure:
        print(tls.INSECURE_WARNING, file=sys.stderr, flush=True)
        return tls.Link(None)
    if identity is None:
        raise UserError(
            "he-party needs --identity DIR: make keys with `secinfer keys --out DIR` (each "
            "side keeps its .key and gets the other's .crt), or pass --insecure-channel"
        )
    me = tls.HE_ROLES[role]
    peer = tls.HE_ROLES["client" if role == "server" else "server"]
    try:
        return tls.Link(tls.load_identity(identity, me, [peer]))
    except tls.IdentityError as exc:
        raise UserError(str(exc)) from None


def server_main(
    *,
    model: Path | None,
    trust_model: bool,
    config_path: Path | None,
    host: str,
    port: int,
    out_dir: Path,
    timeout: float,
    refresh: bool,
    public_embedding: bool,
    evaluation: Any = None,
    link: tls.Link,
    hiding_bits: float = DEFAULT_HIDING_BITS,
    flood_bits: int = 0,
    network: str = "lan",
    packing: str = "auto",
    generate: bool = False,
) -> None:
    """With `evaluation` (an `evaluate.Evaluation`) the session is a private evaluation;
    with `generate`, greedy generation from the decoder directory `model`
    (`secinfer.backends.he.generation`: planned once the client's lengths are known).
    `link` (`he_link`) secures the connection (`Link(None)`: the opt-in plain socket).
    The CKKS parameters are chosen here, before listening (`choice.choose_parameters`, for
    `hiding_bits` of refresh hiding and the `network`'s costs): a model no 128-bit set can
    serve is refused before any key exists. `flood_bits` floods the output."""
    from secinfer import load
    from secinfer.backends.he.kernels import check_he_plan
    from secinfer.backends.he.session import serve
    from secinfer.core.prepare import prepare

    if model is None:
        raise UserError("--role server needs --model FILE")
    if not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: no such directory")
    if generate:
        if evaluation is not None:
            raise UserError("give --generate or --loss (an evaluation), not both")
        settings = (config_path, refresh, hiding_bits, network, packing, flood_bits)
        _serve_generation(model, settings, host, port, out_dir, timeout, link)
        return
    loaded = load.load_model(model, trust_model=trust_model)
    if loaded.program is None:
        raise UserError(
            f"{model}: the he backend needs a torch.export program; {load.EXPORT_RECIPE}"
        )
    samples = loaded.calibration_samples()
    graph, plan = prepare(loaded.program, "he", samples, config_path)
    check_he_plan(graph, plan)
    he_evaluation = None
    if evaluation is not None:
        from secinfer.backends.he.evaluation import HeEvaluation, loss_plan

        if not refresh:
            raise UserError("--no-refresh: a private evaluation's losses need refreshes")
        from secinfer.load.dataset import batch_axis

        he_evaluation = HeEvaluation(
            evaluation, loss_plan(graph, samples, evaluation), batch_axis(loaded.program)
        )
    choice = _choose(
        graph, plan, loaded, samples, refresh, public_embedding, hiding_bits, network,
        he_evaluation, packing,
    )  # fmt: skip
    with _listen(host, port) as listener:
        _guard(
            "server",
            lambda: serve(
                graph,
                plan,
                listener,
                out_dir,
                timeout=timeout,
                allow_refresh=refresh,
                public_embedding=public_embedding,
                check_inputs=loaded.check_inputs,
                evaluation=he_evaluation,
                link=link,
                params=choice,
                flood_bits=flood_bits,
                packing=packing,
            ),
        )


def _listen(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port))
    except OSError as exc:
        raise UserError(f"--port {port}: cannot listen on {host} ({exc.strerror})") from None


def _serve_generation(
    model: Path,
    settings: tuple[Any, ...],
    host: str,
    port: int,
    out_dir: Path,
    timeout: float,
    link: tls.Link,
) -> None:
    """The server of a generation: the decoder loaded (and refused) before listening."""
    from secinfer.backends.he.generation import GenerationSettings, serve_generation
    from secinfer.load.decoder import load_decoder

    decoder = load_decoder(model)
    chosen = GenerationSettings(*settings)
    with _listen(host, port) as listener:
        _guard(
            "server",
            lambda: serve_generation(
                decoder, listener, out_dir, chosen, timeout=timeout, link=link
            ),
        )


def client_main(
    *,
    connect: str,
    input_paths: tuple[Path, ...],
    out_dir: Path,
    timeout: float,
    evaluation: Any = None,
    eval_data: Path | None = None,
    batch_size: int = 64,
    link: tls.Link,
    generate: bool = False,
    max_new_tokens: int = 16,
    stop_token: int | None = None,
    sampling: Any = None,
    tokenizer: Path | None = None,
) -> None:
    """A query on --input, with `evaluation` a private evaluation on --eval-data, or with
    `generate` greedy generation after the prompt ids in --input, over `link` (`he_link`;
    `Link(None)`: the opt-in plain socket)."""
    from secinfer import load
    from secinfer.backends.he.limits import he_limit
    from secinfer.backends.he.session import query
    from secinfer.load.values import check_values

    host, _, port = connect.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--connect {connect}: give HOST:PORT")
    if generate:
        _generate_client((host, int(port)), input_paths, out_dir, timeout, link,
                         max_new_tokens, stop_token, sampling, tokenizer)  # fmt: skip
        return
    if evaluation is not None:
        from secinfer.backends.he.evaluation import evaluate
        from secinfer.load.dataset import open_dataset

        if eval_data is None:
            raise UserError("--role client needs --eval-data DATA for an evaluation")
        if not out_dir.is_dir():
            raise UserError(f"--out {out_dir}: no such directory")
        data = open_dataset(eval_data, limit=he_limit())
        address = (host, int(port))
        _guard(
            "client",
            lambda: evaluate(
                address, data, batch_size, evaluation, out_dir, timeout=timeout, link=link
            ),
        )
        return
    if len(input_paths) != 1:
        raise UserError("--role client needs one --input FILE (.npy or .pt)")
    if not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: no such directory")
    path = input_paths[0]
    if not path.is_file():
        raise UserError(f"--input {path}: no such file")

    def read_inputs(names: list[str]) -> tuple[torch.Tensor, ...]:
        stub = load.LoadedModel(None, "architecture", path, (), names)
        inputs = load.read_input(path, stub)
        check_values(inputs, names, he_limit())  # before anything is encrypted
        return inputs

    _guard(
        "client",
        lambda: query((host, int(port)), read_inputs, out_dir, timeout=timeout, link=link),
    )


def _generate_client(
    address: tuple[str, int],
    input_paths: tuple[Path, ...],
    out_dir: Path,
    timeout: float,
    link: tls.Link,
    max_new_tokens: int,
    stop_token: int | None,
    sampling: Any,
    tokenizer: Path | None,
) -> None:
    """The client of a generation: the prompt ids read and checked before connecting; each
    token picked by `sampling` (None: greedy)."""
    from secinfer.backends.he.generation import generate
    from secinfer.load.decoder import open_tokenizer, read_prompt_ids

    if len(input_paths) != 1:
        raise UserError("--role client --generate needs one --input IDS.npy (the prompt)")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: give at least 1")
    if not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: no such directory")
    prompt = read_prompt_ids(input_paths[0])
    text = open_tokenizer(tokenizer)
    _guard(
        "client",
        lambda: generate(
            address,
            prompt,
            max_new_tokens,
            stop_token,
            out_dir,
            timeout=timeout,
            link=link,
            sampling=sampling,
            tokenizer=text,
        ),
    )


def _choose(
    graph: Any,
    plan: Any,
    loaded: Any,
    samples: list[Any],
    refresh: bool,
    public_embedding: bool,
    hiding_bits: float,
    network: str,
    evaluation: Any,
    packing: str,
) -> Any:
    """The CKKS parameters for the model's example shapes (`choice.choose_parameters`):
    the refresh's value bound from the calibration samples, every candidate priced by a dry
    run. UserError (before any key) when no 128-bit set can serve the model."""
    from secinfer.backends.he.choice import choose_parameters, example_specs, value_bound

    example = tuple(loaded.example_inputs) or (samples[0] if samples else ())
    if not example:
        raise UserError("the he server needs the model's example input to plan its parameters")
    specs = example_specs(graph, example, public_embedding)
    bound = value_bound(graph, specs, samples or [example])
    return choose_parameters(
        graph, plan, specs, bound, hiding_bits=hiding_bits, allow_refresh=refresh,
        network=network, evaluation=evaluation, packing=packing,
    )  # fmt: skip


def _guard(role: str, work: object) -> None:
    """Run `work`; the peer's error, a timeout or a broken message become one line, also
    when they happened inside a kernel (`_link_failure`)."""
    try:
        _link_failure(work)
    except PeerError as exc:
        raise UserError(
            f"the {'client' if role == 'server' else 'server'} stopped: {exc}"
        ) from None
    except ssl.SSLError as exc:
        peer = "client" if role == "server" else "server"
        raise PartyError(
            f"{role}: the TLS channel failed ({tls.ssl_reason(exc)}); if the {peer} "
            f"refused this side's certificate, give it this side's {tls.HE_ROLES[role]}.crt"
        ) from None
    except PeerTimeout as exc:
        raise PartyError(f"{role}: {exc}") from None
    except MessageError as exc:
        raise PartyError(f"{role}: {exc}") from None
    except (ConnectionError, TimeoutError) as exc:
        raise PartyError(f"{role}: the connection failed ({exc})") from None


_LINK_ERRORS = (PeerError, PeerTimeout, MessageError, ssl.SSLError, ConnectionError, TimeoutError)


def _link_failure(work: object) -> None:
    """Run `work`. The executor wraps a kernel's every failure in `ExecutionError` (naming
    the node); when its cause is the link (the peer gone, silent, or refusing), that
    cause is raised instead, so that `_guard` gives it its one line."""
    from secinfer.core.execute import ExecutionError

    try:
        work()  # type: ignore[operator]
    except ExecutionError as exc:
        cause = exc.__cause__
        while isinstance(cause, ExecutionError):
            cause = cause.__cause__
        if isinstance(cause, _LINK_ERRORS):
            raise cause from None
        raise

"""The `secinfer` command line.

Exit codes: 0 success, 2 user error (bad file, bad flag, unsupported op, bad input),
1 internal error or a failed secure run (a peer that never connected, vanished or timed
out: one line, no traceback), 128 + N when a launcher was stopped by signal N (SIGTERM,
SIGINT, SIGHUP: its parties stopped and its temporary files removed first). User errors
are one line on stderr (`error: ...`), never a traceback, and nothing is half-written:
outputs and reports are written only after a run succeeds.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from protocols.net import PEER_TIMEOUT
from secinfer.errors import Interrupted, PartyError, UserError

BACKEND_CHOICES = ("plain", "approx", "mpc", "he")


class Group(click.Group):
    """Turns UserError anywhere below into `error: <message>` and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        # torch.export's own deprecation noise when loading programs; not the user's concern
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except PartyError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except Interrupted as exc:
            click.echo(
                f"error: {exc}: stopped the parties and removed the run's temporary files",
                err=True,
            )
            # Every cleanup ran on the way here; leave without the interpreter's teardown
            # (seconds with torch loaded), as one asked to stop should.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.exit_code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="secinfer")
def main() -> None:
    """Private inference on transformers under MPC (CrypTen) and CKKS (TenSEAL).

    \b
    secinfer inspect MODEL          what the model needs: ops, coverage, ranges, HE depth
    secinfer run MODEL -b approx    run with the approximations, compare with plaintext
    secinfer run MODEL -b mpc|he    run it securely (parties as local processes)
    secinfer eval MODEL DATA        losses and accuracy on labelled data, vs plaintext
    secinfer generate DIR --prompt  greedy text generation with a key/value cache
    secinfer catalog                the approximations and their certified errors
    secinfer keys --out DIR         identities for the parties' authenticated channels
    """


def _model_options(fn: Any) -> Any:
    fn = click.option(
        "--trust-model",
        is_flag=True,
        help="Allow formats that run code from the file: a pickled nn.Module, a TorchScript "
        "archive, a torch.export archive with pickled members.",
    )(fn)
    return click.argument("model", type=click.Path(path_type=Path))(fn)


def _mpc_options(fn: Any) -> Any:
    """--provider, --precision-bits and --timeout, shared by `run` (mpc) and `party`."""
    fn = click.option(
        "--timeout",
        type=float,
        default=PEER_TIMEOUT,
        show_default=True,
        help="mpc: seconds a party waits for a peer before giving up; he: seconds a side "
        "lets the other stay silent (a working side says so: README).",
    )(fn)
    fn = click.option(
        "--precision-bits",
        type=click.IntRange(8, 24),
        default=16,
        show_default=True,
        help="mpc: fractional bits of the fixed-point encoding.",
    )(fn)
    return click.option(
        "--provider",
        type=click.Choice(["dealer", "trusted-first-party"]),
        default="dealer",
        show_default=True,
        help="mpc: who makes Beaver triples (trusted-first-party is insecure: local tests only).",
    )(fn)


def _hiding_option(who: str) -> Any:
    """--hiding-bits, for `run`, `eval` (`who`: "he") and `he-party` ("Server")."""
    return click.option(
        "--hiding-bits",
        type=click.IntRange(1, 128),
        default=40,
        show_default=True,
        help=f"{who}: statistical hiding, in bits, of every intermediate value a refresh shows "
        "the client (below 40: a warning; more bits can cost levels and a larger ring).",
    )


def _sampling_options(who: str) -> Any:
    """--temperature, --top-k and --seed: how the next token is picked
    (`secinfer.core.sampling`), for `generate` and the data owner of a party."""

    def add(fn: Any) -> Any:
        fn = click.option(
            "--seed",
            type=int,
            help=f"{who}sampling's seed (default: a fresh one, recorded in the report).",
        )(fn)
        fn = click.option(
            "--top-k",
            type=int,
            help=f"{who}sample from the K largest logits only (he, plain, approx).",
        )(fn)
        return click.option(
            "--temperature",
            type=float,
            default=0.0,
            show_default=True,
            help=f"{who}sample at this temperature (0: greedy), by the Gumbel-max rule with "
            "noise the data owner draws.",
        )(fn)

    return add


def _party_generation_options(data_side: str, models: str) -> Any:
    """--generate and the data side's generation options (new tokens, stop token,
    sampling, tokenizer) for `party` (`data_side` "Data owner") and `he-party` ("Client");
    `models` says what each side's --model and --input are."""
    who = f"{data_side}, --generate: "

    def add(fn: Any) -> Any:
        fn = click.option(
            "--tokenizer",
            type=click.Path(path_type=Path, file_okay=False),
            help=f"{who}a directory with the model's tokenizer files, to print each token's text.",
        )(fn)
        fn = _sampling_options(who)(fn)
        fn = click.option("--stop-token", type=int, help=f"{who}stop after this token id.")(fn)
        fn = click.option(
            "--max-new-tokens",
            type=int,
            default=16,
            show_default=True,
            help=f"{who}how many tokens at most.",
        )(fn)
        return click.option(
            "--generate", is_flag=True, help=f"Generate text (`secinfer generate`): {models}."
        )(fn)

    return add


def _sampling(options: dict[str, Any]) -> Any:
    """The sampling options, popped from a command's options and checked."""
    from secinfer.core.sampling import Sampling

    keys = ("temperature", "top_k", "seed")
    return Sampling.from_options(*(options.pop(k) for k in keys))


def _server_run_options(who: str) -> Any:
    """--hiding-bits, --flood-bits and --packing of an HE query, for `run` (`who`: "he")
    and `he-party` ("Server")."""

    def apply(fn: Any) -> Any:
        fn = click.option(
            "--packing",
            type=click.Choice(["auto", "feature-major"]),
            default="auto",
            show_default=True,
            help=f"{who}: how linear layers and attention pack ciphertexts: the cost model's "
            "choice per layer, or feature-major everywhere (the slower baseline). Re-layouts "
            "ride on the refreshes' round trips (off with --no-refresh: feature-major).",
        )(fn)
        fn = click.option(
            "--flood-bits",
            type=click.IntRange(0, 56),
            default=0,
            show_default=True,
            help=f"{who}: flood the output's CKKS noise with integers uniform on +-2^F per "
            "coefficient before the client decrypts it (circuit privacy; 0: off). Costs "
            "precision: the report states the error bound.",
        )(fn)
        return _hiding_option(who)(fn)

    return apply


def _evaluation_options(data_side: str) -> Any:
    """--loss, --eval-data, --reveal-to, the hyper-parameters and --batch-size of a party's
    private evaluation, shared by `party` and `he-party` (`_evaluation_settings` reads
    them); `data_side` names the side that holds the labelled data."""

    def decorate(fn: Any) -> Any:
        options = [
            click.option(
                "--loss",
                "eval_losses",
                help="Private evaluation instead of queries (both sides): comma-separated losses.",
            ),
            click.option(
                "--eval-data",
                type=click.Path(path_type=Path),
                help=f"{data_side}, private evaluation: labelled .npz (or a directory of them).",
            ),
            click.option(
                "--reveal-to",
                type=click.Choice(["model-owner", "data-owner"]),
                default="data-owner",
                show_default=True,
                help="Private evaluation: who learns the aggregate.",
            ),
            click.option("--zloss-a", type=float, default=1.0, show_default=True),
            click.option("--zloss-b", type=float, default=1.0, show_default=True),
            click.option("--gce-q", type=float, default=0.7, show_default=True),
            click.option("--compsum-tau", type=float, default=1.5, show_default=True),
            click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True),
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _target_option(fn: Any) -> Any:
    """--target: the secure backend whose plan `approx` runs (and so predicts)."""
    return click.option(
        "--target",
        type=click.Choice(["mpc", "he"]),
        help="approx: run the plan of this secure backend, so that its error predicts that "
        "backend's approximation error [default: mpc; mpc and he run their own].",
    )(fn)


def _inputs(
    loaded: Any, input_path: Path | None, text: str | None, limit: Any = None
) -> tuple[Any, ...]:
    """The user's inputs, checked for the model (count, dtype, shape) and their values
    (non-empty, finite, within `limit`: `load.values`) before any backend sees them."""
    from secinfer import load
    from secinfer.load.values import check_values

    if input_path is not None and text is not None:
        raise UserError("give --input FILE or --text STR, not both")
    if input_path is not None:
        inputs = load.read_input(input_path, loaded)
    elif text is not None:
        inputs = load.encode_text(text, loaded)
    else:
        inputs = tuple(loaded.example_inputs)
        if not inputs:
            raise UserError(f"{loaded.path}: this model has no default sample; pass --input FILE")
    loaded.ensure_program(inputs)
    loaded.check_inputs(inputs)
    check_values(inputs, loaded.input_names, limit)
    return inputs


@main.command()
@_model_options
@click.option(
    "-b",
    "--backend",
    type=click.Choice(BACKEND_CHOICES),
    default="approx",
    show_default=True,
    help="Where to run: exact torch, approximations in float64, or a secure backend.",
)
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path),
    help="Input tensor(s): .npy, or .pt (loaded with weights_only).",
)
@click.option("--text", help="Input text (models whose directory has a tokenizer).")
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the model's first output here (.npy).",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the run report here (JSON).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Plan overrides (JSON or YAML): approximation per function or node.",
)
@click.option(
    "--plot",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Draw the per-layer error against plaintext to this PNG.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_target_option
@_mpc_options
@click.option(
    "--no-refresh",
    is_flag=True,
    help="he: never ask the client to re-encrypt; a model deeper than one context fails.",
)
@click.option(
    "--public-embedding",
    is_flag=True,
    help="he: the embedding table is public; the client embeds its token ids itself "
    "(default: it encrypts them one-hot and the server multiplies by its table).",
)
@_server_run_options("he")
def run(
    model: Path,
    trust_model: bool,
    backend: str,
    input_path: Path | None,
    text: str | None,
    output: Path | None,
    report_path: Path | None,
    config_path: Path | None,
    plot: Path | None,
    as_json: bool,
    target: str | None,
    provider: str,
    precision_bits: int,
    timeout: float,
    no_refresh: bool,
    public_embedding: bool,
    hiding_bits: int,
    flood_bits: int,
    packing: str,
) -> None:
    """Run MODEL on a backend and compare its output with plaintext.

    With --backend mpc, the model owner, the data owner and the dealer run as three
    processes on this machine (see `secinfer party` for several hosts); only the data
    owner's process sees the input and the output, only the model owner's the weights.

    With --backend he, the model owner (server) and the data owner (client, who holds
    the only secret key) run as two processes over a loopback socket (see
    `secinfer he-party`); convert the model to polynomial form first (README).

    With no --input or --text, the model's default sample is used (digits: the first
    test image; text models: 16 fixed token ids; ViT: fixed pixels).
    """
    _check_suffix(output, ".npy", "--output")
    _check_suffix(report_path, ".json", "--report")
    _check_suffix(plot, ".png", "--plot")
    from secinfer import backends, load
    from secinfer.backends.base import RunOptions
    from secinfer.core.plan import plan_target
    from secinfer.launch import run as runner
    from secinfer.report.files import dumps_strict, write_json, write_npy

    chosen = backends.get(backend)
    options = RunOptions(
        trust_model=trust_model,
        config=config_path,
        peer_timeout=timeout,
        provider=provider,
        precision_bits=precision_bits,
        refresh=not no_refresh,
        public_embedding=public_embedding,
        target=target,
        hiding_bits=hiding_bits,
        flood_bits=flood_bits,
        packing=packing.replace("-", "_"),
    )
    plan_for = plan_target(backend, target)
    loaded = load.load_model(model, trust_model=trust_model)
    inputs = _inputs(loaded, input_path, text, chosen.value_limit(options))
    samples = loaded.calibration_samples() or [inputs]
    for notice in chosen.notices(options):
        click.echo(notice, err=True)
    if chosen.secure:
        if loaded.source_module is not None:
            raise UserError(
                f"{model}: the {backend} backend needs a torch.export program; {load.EXPORT_RECIPE}"
            )
        outcome = runner.run_secure(
            backend,
            model,
            loaded.program,
            inputs,
            samples=samples,
            model_name=str(model),
            output_name=loaded.output_name,
            options=options,
        )
    else:
        outcome = runner.run(
            loaded.program,
            backend,
            inputs,
            samples=samples,
            model_name=str(model),
            output_name=loaded.output_name,
            config_path=config_path,
            progress=len(loaded.program.graph.nodes) > 2000,
            target=plan_for,
        )
    if output is not None:
        write_npy(output, outcome.output)
    if report_path is not None:
        write_json(report_path, outcome.report)
    if plot is not None:
        from secinfer.report.plots import plot_layers

        plot_layers(outcome.report, plot)
    if as_json:
        click.echo(dumps_strict(outcome.report))
    else:
        from secinfer.report.common import summary

        click.echo(summary(outcome.report))
        extra = chosen.summary(outcome.report)
        if extra:
            click.echo(extra)
        click.echo(f"{loaded.output_name}: shape {tuple(outcome.output.shape)}")


@main.command()
@_model_options
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path),
    help="Calibrate on this input instead of the model owner's sample.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the inspection as JSON.")
def inspect(model: Path, trust_model: bool, input_path: Path | None, as_json: bool) -> None:
    """Show what MODEL needs: ops, backend coverage, parameters, ranges, HE depth."""
    from secinfer import backends, load
    from secinfer.core.graph import build_graph
    from secinfer.core.inspection import format_inspection, inspect_graph

    loaded = load.load_model(model, trust_model=trust_model)
    samples = []
    if input_path is not None or loaded.program is None:
        samples = [_inputs(loaded, input_path, None)]
    elif loaded.example_inputs:
        samples = loaded.calibration_samples()
    backends.load_all()
    graph = build_graph(loaded.program)
    info = inspect_graph(graph, samples)
    info["model"] = {
        "path": str(model),
        "format": loaded.source,
        "inputs (data owner)": loaded.input_names,
        "output": loaded.output_name,
    }
    if as_json:
        from secinfer.report.files import dumps_strict

        click.echo(dumps_strict(info))
        return
    header = [
        f"model: {model} ({loaded.source})",
        f"inputs (data owner): {', '.join(loaded.input_names)}; output: {loaded.output_name}",
    ]
    click.echo(format_inspection(info, header))


@main.command()
@click.option(
    "--role",
    type=click.Choice(["model-owner", "data-owner", "dealer"]),
    required=True,
    help="Which party this process is.",
)
@click.option(
    "--rendezvous",
    required=True,
    help="Where the parties meet: tcp://HOST:PORT (the model owner's host listens there).",
)
@click.option("--model", type=click.Path(path_type=Path), help="Model owner: the model file.")
@click.option(
    "--trust-model",
    is_flag=True,
    help="Model owner: allow a model file that runs code (see run --help).",
)
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="Model owner: plan overrides."
)
@click.option(
    "--input",
    "input_paths",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Data owner: input (.npy/.pt); repeat for several queries in one session (the "
    "weights' masks are opened once for all; outputs output-1.npy, output-2.npy, ...).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Directory for this party's cost record (and the data owner's output.npy).",
)
@click.option(
    "--identity",
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory with this party's key and certificate and its peers' certificates "
    "(`secinfer keys`): every link is mutual TLS 1.3, each peer proving its role.",
)
@click.option(
    "--insecure-channel",
    is_flag=True,
    help="gloo sockets in clear: no authentication, no encryption (experiments only).",
)
@_party_generation_options(
    "Data owner",
    "the model owner's --model is a causal-LM directory, the data owner's one --input the "
    "prompt's token ids (.npy)",
)
@_mpc_options
@_evaluation_options("Data owner")
def party(role: str, **options: Any) -> None:
    """Run one party of an MPC run (for several hosts; `run --backend mpc` starts all three).

    \b
    each:    secinfer keys --out keys --role ROLE; give your .crt to the other two and put
             theirs in your keys directory
    host A:  secinfer party --role model-owner --model M.pt2 --rendezvous tcp://A:29500 \\
               --identity keys
    host A:  secinfer party --role dealer --rendezvous tcp://A:29500 --identity keys
    host B:  secinfer party --role data-owner --input x.npy --rendezvous tcp://A:29500 \\
               --identity keys
    """
    import os

    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")  # c10d's C++ traces on a lost peer
    from secinfer.backends.mpc.main import main_for_role

    code = 0
    try:
        evaluation = _evaluation_settings(options)
        sampling = _sampling(options)
        main_for_role(role, evaluation=evaluation, sampling=sampling, **options)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        code = 2
    except PartyError as exc:
        click.echo(f"error: {exc}", err=True)
        code = 1
    # A party is always its own process. Gloo can abort (SIGABRT) while the interpreter
    # tears its process groups down after a peer has left; this party's results and error
    # line are written by now, so it leaves without that teardown and keeps its exit status.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _evaluation_settings(options: dict[str, Any]) -> Any:
    """`--loss` and its hyper-parameters, popped from a party's options: an
    `evaluate.Evaluation`, or None for queries."""
    keys = ("eval_losses", "zloss_a", "zloss_b", "gce_q", "compsum_tau")
    names, a, b, q, tau = (options.pop(k) for k in keys)
    reveal = options.pop("reveal_to")
    if names is None:
        if options.get("eval_data") is not None:
            raise UserError("--eval-data needs --loss NAMES (the losses both sides agreed to)")
        return None
    from secinfer.core.evaluation import Evaluation, check_hyper_parameters, parse_losses

    losses = tuple(parse_losses(names))
    check_hyper_parameters(a, q, tau, secure=True, losses=losses)
    return Evaluation(losses, reveal, a, b, q, tau)


@main.command("eval")
@_model_options
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "-b",
    "--backend",
    type=click.Choice(BACKEND_CHOICES),
    default="approx",
    show_default=True,
    help="Where to run the model and the losses.",
)
@click.option(
    "--loss",
    "loss_names",
    default="ce",
    show_default=True,
    help="Comma-separated: ce, square, zloss, gce, mae, compsum, sparsemax, entmax15 "
    "(accuracy is always reported).",
)
@click.option(
    "--reveal-to",
    type=click.Choice(["model-owner", "data-owner"]),
    default="data-owner",
    show_default=True,
    help="mpc, he: the party that learns the aggregate losses (and nothing per example).",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the evaluation report here (JSON).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Plan overrides (JSON or YAML).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Rows per batch; a model exported with a static batch takes its own (the last "
    "batch padded, the padding in no total).",
)
@_target_option
@click.option(
    "--zloss-a", type=float, default=1.0, show_default=True, help="Z-loss sharpness a > 0."
)
@click.option("--zloss-b", type=float, default=1.0, show_default=True, help="Z-loss offset b.")
@click.option(
    "--gce-q", type=float, default=0.7, show_default=True, help="Generalised cross-entropy q."
)
@click.option(
    "--compsum-tau",
    type=float,
    default=1.5,
    show_default=True,
    help="The comp-sum loss's tau >= 0 (0 sum-exponential, 1 cross-entropy, 2 MAE; secure "
    "backends take tau >= 1).",
)
@_hiding_option("he")
def eval_(
    model: Path,
    trust_model: bool,
    data: Path,
    backend: str,
    loss_names: str,
    reveal_to: str,
    report_path: Path | None,
    config_path: Path | None,
    batch_size: int,
    target: str | None,
    zloss_a: float,
    zloss_b: float,
    gce_q: float,
    compsum_tau: float,
    hiding_bits: int,
) -> None:
    """Evaluate MODEL's losses and accuracy on labelled DATA, against plaintext.

    DATA is a .npz with arrays `inputs` (the model's input, batch first) and `labels`
    (integer classes), or a directory of such shards (read one at a time). Losses are
    means over examples; the square loss of one example sums (o_k - onehot(y)_k)^2 over
    classes. Prints each loss under the backend and in plaintext, and their relative error.

    \b
    mpc: losses on shares, only the totals opened, to --reveal-to.
    he:  the server sums encrypted losses; the client decrypts the totals alone (and
         sends them to the server for --reveal-to model-owner). Needs an HE-friendly model
         (`approximations.convert`), like `run -b he`.
    """
    from approximations.losses import LossOptions
    from secinfer import backends, load
    from secinfer.backends.base import RunOptions
    from secinfer.core.evaluation import check_hyper_parameters, parse_losses
    from secinfer.core.prepare import prepare
    from secinfer.launch.evaluate import evaluate_local, evaluate_secure, model_batches
    from secinfer.load.dataset import open_dataset
    from secinfer.report.evaluation import table
    from secinfer.report.files import write_json

    _check_suffix(report_path, ".json", "--report")
    names = parse_losses(loss_names)
    chosen = backends.get(backend)
    check_hyper_parameters(zloss_a, gce_q, compsum_tau, secure=chosen.secure, losses=names)
    run_options = RunOptions(
        trust_model=trust_model, config=config_path, target=target, hiding_bits=hiding_bits
    )
    for notice in chosen.notices(run_options):
        click.echo(notice, err=True)
    dataset = open_dataset(data, limit=chosen.value_limit(run_options))
    loaded = load.load_model(model, trust_model=trust_model)
    if loaded.program is None:
        raise UserError(f"{model}: eval needs a torch.export program; {load.EXPORT_RECIPE}")
    samples = loaded.calibration_samples()
    given = click.get_current_context().get_parameter_source("batch_size")
    batches = model_batches(
        loaded, batch_size, explicit=given is not click.core.ParameterSource.DEFAULT
    )
    graph, plan = prepare(loaded.program, backend, samples, config_path, target)
    options = LossOptions(zloss_a, zloss_b, gce_q, compsum_tau)
    chosen.check(graph, plan, run_options)
    if chosen.secure:
        report = evaluate_secure(
            backend, loaded, graph, plan, model, data, dataset, names, options, batches,
            reveal_to, run_options,
        )  # fmt: skip
    else:
        report = evaluate_local(loaded, graph, plan, backend, dataset, names, options, batches)
    report.update(model=str(model), reveal_to=reveal_to)
    if report_path is not None:
        write_json(report_path, report)
    click.echo(table(report))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--prompt", help="The prompt as text (model directories with a tokenizer).")
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path),
    help="The prompt as token ids: a .npy array of shape (P,) or (1, P).",
)
@click.option(
    "--max-new-tokens",
    type=int,
    default=16,
    show_default=True,
    help="How many tokens to generate (fewer when --stop-token comes first).",
)
@click.option(
    "-b",
    "--backend",
    type=click.Choice(BACKEND_CHOICES),
    default="approx",
    show_default=True,
    help="Where to run: exact torch, approximations in float64, or a secure backend.",
)
@click.option("--stop-token", type=int, help="Stop after this token id is generated.")
@_sampling_options("")
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the generated token ids here (.npy, int64).",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the generation report here (JSON).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Plan overrides (JSON or YAML): approximation per function or node.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_target_option
@_mpc_options
def generate(
    model: Path,
    prompt: str | None,
    input_path: Path | None,
    max_new_tokens: int,
    backend: str,
    stop_token: int | None,
    output: Path | None,
    report_path: Path | None,
    config_path: Path | None,
    as_json: bool,
    target: str | None,
    provider: str,
    precision_bits: int,
    timeout: float,
    temperature: float,
    top_k: int | None,
    seed: int | None,
) -> None:
    """Generate text with MODEL after a prompt: a Hugging Face causal-LM directory,
    or (for -b he, a converted model) a directory `save_decoder` wrote.

    The prompt runs once; then each new token runs one row through the model with the
    key/value cache of the tokens before it. Each token is printed on stderr as it comes
    (with its seconds); the report compares the tokens with plaintext greedy decoding.
    """
    _check_suffix(output, ".npy", "--output")
    _check_suffix(report_path, ".json", "--report")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: give at least 1")
    from secinfer.core.sampling import Sampling

    sampling = Sampling.from_options(temperature, top_k, seed)
    if backend == "mpc" and sampling.top_k is not None:
        raise UserError(
            f"--top-k {top_k} under mpc would need the k-th largest logit on shares (k "
            "tournaments over the vocabulary); use --temperature alone, or -b he"
        )
    from secinfer.backends.base import RunOptions
    from secinfer.launch.generate import generate_local, generate_secure
    from secinfer.load.decoder import load_decoder, read_prompt
    from secinfer.report.files import dumps_strict, write_json, write_npy
    from secinfer.report.generation import generation_report, generation_summary

    decoder = load_decoder(model)
    ids = read_prompt(decoder, prompt, input_path)
    decoder.check_length(int(ids.shape[1]), max_new_tokens)
    if stop_token is not None:
        decoder.check_token(stop_token, "--stop-token")

    def show(token: int, record: dict[str, Any]) -> None:
        shown.append(token)
        piece = f" {decoder.tokenizer.decode([token])!r}" if decoder.tokenizer is not None else ""
        click.echo(
            f"token {len(shown)}/{max_new_tokens}: {token}{piece} ({record['seconds']:.2f} s)",
            err=True,
        )

    shown: list[int] = []
    reference = None
    if backend in ("mpc", "he"):
        options = RunOptions(
            config=config_path,
            peer_timeout=timeout,
            provider=provider,
            precision_bits=precision_bits,
        )
        generation, parties = generate_secure(
            backend, model, ids, max_new_tokens, options, stop_token=stop_token,
            sampling=sampling, decoder=decoder,
        )  # fmt: skip
        count = len(generation.tokens)
        reference = generate_local(decoder, ids, count, "plain", sampling=sampling).tokens
    else:
        generation = generate_local(
            decoder,
            ids,
            max_new_tokens,
            backend,
            stop_token=stop_token,
            sampling=sampling,
            config_path=config_path,
            target=target,
            on_token=show,
        )
    text = decoder.tokenizer.decode(generation.tokens) if decoder.tokenizer is not None else None
    report = generation_report(generation, str(model), text, reference)
    if backend in ("mpc", "he"):
        report["parties"] = parties
    if output is not None:
        import numpy as np

        write_npy(output, np.asarray(generation.tokens, dtype=np.int64))
    if report_path is not None:
        write_json(report_path, report)
    click.echo(dumps_strict(report) if as_json else generation_summary(report))


@main.command("he-party")
@click.option(
    "--role",
    type=click.Choice(["server", "client"]),
    required=True,
    help="server: the model owner (no secret key); client: the data owner (the key).",
)
@click.option("--model", type=click.Path(path_type=Path), help="Server: the model file.")
@click.option(
    "--trust-model",
    is_flag=True,
    help="Server: allow a model file that runs code (see run --help).",
)
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="Server: plan overrides."
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Server: address to listen on."
)
@click.option("--port", type=click.IntRange(1, 65535), help="Server: port to listen on.")
@click.option("--connect", help="Client: the server's HOST:PORT.")
@click.option(
    "--input",
    "input_paths",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Client: the input (.npy or .pt).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Directory for this side's record (and the client's output.npy).",
)
@click.option(
    "--timeout",
    type=float,
    default=PEER_TIMEOUT,
    show_default=True,
    help="Seconds the peer may stay silent before this side gives up (a working peer says "
    "so every quarter of it); also the wait for the peer to connect.",
)
@click.option("--no-refresh", is_flag=True, help="Server: never ask the client to re-encrypt.")
@click.option(
    "--public-embedding", is_flag=True, help="Server: send the embedding table to the client."
)
@_server_run_options("Server")
@click.option(
    "--identity",
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory with this side's key and certificate and the other side's certificate "
    "(`secinfer keys`): the server is the model-owner, the client the data-owner.",
)
@click.option(
    "--insecure-channel",
    is_flag=True,
    help="A plain socket: no authentication, no encryption (experiments only).",
)
@_party_generation_options(
    "Client",
    "the server's --model is a decoder directory (Hugging Face causal LM, or one "
    "save_decoder wrote), the client's one --input the prompt's token ids (.npy)",
)
@_evaluation_options("Client")
def he_party(role: str, **options: Any) -> None:
    """Run one side of an HE run (for two hosts; `run --backend he` starts both).

    \b
    both:    secinfer keys --out keys-A --role model-owner   (B: --role data-owner),
             then swap the .crt files so each keys dir holds the other's certificate
    host A:  secinfer he-party --role server --model M.pt2 --identity keys-A \\
               --host 0.0.0.0 --port 29600
    host B:  secinfer he-party --role client --connect A:29600 --identity keys-B --input x.npy
    private evaluation: add --loss ce,square to both, --eval-data test.npz to the client
    generation: add --generate to both (the server's --model a decoder directory), the
             prompt's ids as the client's --input, and --max-new-tokens N to the client
    """
    from secinfer.backends.he.main import client_main, he_link, server_main

    code = 0
    try:
        evaluation = _evaluation_settings(options)
        sampling = _sampling(options)
        if role == "server" and options["eval_data"] is not None:
            raise UserError("--eval-data is the client's option (the data owner's labelled data)")
        if role == "client" and evaluation is not None and options["input_paths"]:
            raise UserError(
                "--input with --loss: a client either queries (--input) or evaluates "
                "(--loss with --eval-data)"
            )
        if role == "server":
            if options["port"] is None:
                raise UserError("--role server needs --port PORT")
            link = he_link(role, options["identity"], options["insecure_channel"])
            server_main(
                link=link,
                model=options["model"],
                trust_model=options["trust_model"],
                config_path=options["config_path"],
                host=options["host"],
                port=options["port"],
                out_dir=options["out_dir"],
                timeout=options["timeout"],
                refresh=not options["no_refresh"],
                public_embedding=options["public_embedding"],
                evaluation=evaluation,
                hiding_bits=options["hiding_bits"],
                flood_bits=options["flood_bits"],
                packing=options["packing"].replace("-", "_"),
                generate=options["generate"],
            )
        else:
            if not options["connect"]:
                raise UserError("--role client needs --connect HOST:PORT")
            link = he_link(role, options["identity"], options["insecure_channel"])
            client_main(
                link=link,
                connect=options["connect"],
                input_paths=options["input_paths"],
                out_dir=options["out_dir"],
                timeout=options["timeout"],
                evaluation=evaluation,
                eval_data=options["eval_data"],
                batch_size=options["batch_size"],
                generate=options["generate"],
                max_new_tokens=options["max_new_tokens"],
                stop_token=options["stop_token"],
                sampling=sampling,
                tokenizer=options["tokenizer"],
            )
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        code = 2
    except PartyError as exc:
        click.echo(f"error: {exc}", err=True)
        code = 1
    sys.exit(code)


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Directory for the key and certificate files (created 0700 if missing).",
)
@click.option(
    "--role",
    "roles",
    type=click.Choice(["model-owner", "data-owner", "dealer"]),
    multiple=True,
    help="Only this party's identity (repeatable); default: every role (one machine, tests).",
)
@click.option("--force", is_flag=True, help="Replace existing files.")
def keys(out_dir: Path, roles: tuple[str, ...], force: bool) -> None:
    """Make identities: ROLE.key (private, 0600) and ROLE.crt (self-signed, names the role).

    Each party keeps its own .key and gives its .crt to its peers out of band; a party
    trusts exactly the peers' certificates found beside its key (pinned, no CA). The HE
    server uses model-owner's identity and the HE client data-owner's.

    \b
    one host, all roles:  secinfer keys --out keys
    a party's own:        secinfer keys --out keys --role data-owner
    """
    from protocols import tls

    try:
        written = tls.generate(out_dir, roles or tls.ROLES, force=force)
    except tls.IdentityError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"--out {out_dir}: cannot write there ({exc.strerror})") from None
    for path in written:
        private = path.suffix == ".key"
        what = "private key: keep it here" if private else "certificate: give it to the peers"
        click.echo(f"wrote {path} ({what})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON instead of a table.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True),
    help="Also draw every entry's error curve to this PNG file.",
)
def catalog(as_json: bool, plot: str | None) -> None:
    """List every named approximation: interval, degree or iterations, depth, max error.

    Every max error is certified in float64 against torch on at least 100,000 points.
    """
    if plot and not plot.lower().endswith(".png"):
        raise click.UsageError(f"--plot {plot}: give a file name ending in .png")
    from approximations.library import catalog as entries

    if as_json:
        click.echo(json.dumps(entries.rows(), indent=2))
    else:
        click.echo(entries.markdown())
    if plot:
        from approximations.report import plot_errors

        click.echo(f"wrote {plot_errors(plot)}", err=True)


def _check_suffix(path: Path | None, suffix: str, flag: str) -> None:
    """UserError unless `path` ends in `suffix` and its directory takes a new file."""
    if path is not None and path.suffix.lower() != suffix:
        raise UserError(f"{flag} {path}: give a file name ending in {suffix}")
    from secinfer.report.files import check_destination

    check_destination(path, flag)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

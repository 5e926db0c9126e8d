"""The `secinfer` command line.

Exit codes: 0 success, 2 user error (bad file, bad flag, unsupported op, bad input),
1 internal error. User errors are one line on stderr (`error: ...`), never a traceback,
and nothing is half-written: outputs and reports are written only after a run succeeds.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from secinfer.errors import UserError

BACKEND_CHOICES = ("plain", "approx", "mpc", "he")
AVAILABLE_BACKENDS = ("plain", "approx")


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


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="secinfer")
def main() -> None:
    """Private inference on transformers under MPC (CrypTen) and CKKS (TenSEAL).

    \b
    secinfer inspect MODEL          what the model needs: ops, coverage, ranges, HE depth
    secinfer run MODEL -b approx    run with the approximations, compare with plaintext
    secinfer catalog                the approximations and their certified errors
    """


def _model_options(fn: Any) -> Any:
    fn = click.option(
        "--trust-model",
        is_flag=True,
        help="Allow a pickled nn.Module file: loading it runs code from the file.",
    )(fn)
    return click.argument("model", type=click.Path(path_type=Path))(fn)


def _inputs(loaded: Any, input_path: Path | None, text: str | None) -> tuple[Any, ...]:
    from secinfer import load

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
) -> None:
    """Run MODEL on a backend and compare its output with plaintext.

    With no --input or --text, the model's default sample is used (digits: the first
    test image; text models: 16 fixed token ids; ViT: fixed pixels).
    """
    if backend not in AVAILABLE_BACKENDS:
        raise UserError(
            f"--backend {backend}: not built yet (MPC arrives with issue 5, HE with issue 6); "
            f"available: {', '.join(AVAILABLE_BACKENDS)}"
        )
    _check_suffix(output, ".npy", "--output")
    _check_suffix(report_path, ".json", "--report")
    _check_suffix(plot, ".png", "--plot")
    from secinfer import load, runner
    from secinfer.report import summary, write_json

    loaded = load.load_model(model, trust_model=trust_model)
    inputs = _inputs(loaded, input_path, text)
    samples = [tuple(loaded.example_inputs)] if loaded.example_inputs else [inputs]
    outcome = runner.run(
        loaded.program,
        backend,
        inputs,
        samples=samples,
        model_name=str(model),
        output_name=loaded.output_name,
        config_path=config_path,
        progress=len(loaded.program.graph.nodes) > 2000,
    )
    if output is not None:
        _write_npy(output, outcome.output)
    if report_path is not None:
        write_json(report_path, outcome.report)
    if plot is not None:
        from secinfer.plots import plot_layers

        plot_layers(outcome.report, plot)
    if as_json:
        click.echo(json.dumps(outcome.report, indent=2))
    else:
        click.echo(summary(outcome.report))
        click.echo(f"{loaded.output_name}: shape {tuple(outcome.output.shape)}")


@main.command()
@_model_options
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path),
    help="Calibrate on this input instead of the default sample.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the inspection as JSON.")
def inspect(model: Path, trust_model: bool, input_path: Path | None, as_json: bool) -> None:
    """Show what MODEL needs: ops, backend coverage, parameters, ranges, HE depth."""
    from secinfer import load
    from secinfer.graph import build_graph
    from secinfer.inspection import format_inspection, inspect_graph

    loaded = load.load_model(model, trust_model=trust_model)
    samples = []
    if input_path is not None or loaded.example_inputs or loaded.program is None:
        samples = [_inputs(loaded, input_path, None)]
    graph = build_graph(loaded.program)
    info = inspect_graph(graph, samples)
    info["model"] = {
        "path": str(model),
        "format": loaded.source,
        "inputs (data owner)": loaded.input_names,
        "output": loaded.output_name,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    header = [
        f"model: {model} ({loaded.source})",
        f"inputs (data owner): {', '.join(loaded.input_names)}; output: {loaded.output_name}",
    ]
    click.echo(format_inspection(info, header))


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
    if path is not None and path.suffix.lower() != suffix:
        raise UserError(f"{flag} {path}: give a file name ending in {suffix}")
    if path is not None and not path.parent.exists():
        raise UserError(f"{flag} {path}: directory {path.parent} does not exist")


def _write_npy(path: Path, tensor: Any) -> None:
    import numpy as np

    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, tensor.detach().cpu().numpy())
    tmp.replace(path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

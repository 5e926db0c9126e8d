"""The `secinfer` command line.

Exit codes: 0 success, 2 user error (bad file, bad flag), 1 internal error. User errors are
one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="secinfer")
def main() -> None:
    """Private inference on transformers under MPC (CrypTen) and CKKS (TenSEAL).

    Today: the catalog of approximations. Model runs (`run`, `inspect`) arrive with the
    model-import issue; the MPC and HE backends after it.
    """


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Every catalog entry's stated max error holds on its interval against torch float64."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from approximations import Piecewise, catalog, fit
from approximations.library import puma_gelu

NAMES = list(catalog)


def sample(interval: tuple[float, float], n: int = 40_000, seed: int = 7) -> torch.Tensor:
    """Random points (log-uniform on wide positive intervals) plus both ends: independent
    of the grid used for certification."""
    lo, hi = interval
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, dtype=torch.float64, generator=gen)
    x = (
        torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
        if lo > 0 and hi / lo > 100
        else lo + (hi - lo) * u
    )
    return torch.cat([x, torch.tensor([lo, hi], dtype=torch.float64)])


@pytest.mark.parametrize("name", NAMES)
def test_stated_max_error_holds(name: str) -> None:
    entry = catalog[name]
    x = sample(entry.interval)
    with torch.no_grad():
        got, want = entry.approximation(x), entry.exact(x)
    err = (got - want).abs()
    if entry.error_kind == "relative":
        err = err / want.abs()
    observed = float(err.max())
    assert observed <= entry.max_error * (1 + 1e-9) + 1e-15, (name, observed, entry.max_error)
    if entry.max_error > 1e-12:
        assert observed >= 0.5 * entry.max_error  # stated figures are not padded


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_complete(name: str) -> None:
    row = catalog[name].row()
    assert row["interval"][0] < row["interval"][1]
    # Every entry states its size (degree or iterations) unless it is a closed-form
    # surrogate (a Formula: no depth, plaintext reference only).
    has_size = row["degree"] is not None or row["iterations"] is not None
    assert has_size or row["depth"] is None
    assert math.isfinite(row["max_error"]) and row["max_error"] >= 0


def test_required_functions_are_listed() -> None:
    functions = {catalog[n].function for n in NAMES}
    for needed in (
        "gelu",
        "silu",
        "sigmoid",
        "tanh",
        "erf",
        "exp",
        "log",
        "1/x",
        "1/sqrt(x)",
        "softplus",
    ):
        assert needed in functions
    for gelu in ("gelu.exact", "gelu.puma", "gelu.minimax", "gelu.quad"):
        assert gelu in catalog


def test_puma_gelu_published_and_refit() -> None:
    published = catalog["gelu.puma"].approximation
    refit = catalog["gelu.puma_refit"].approximation
    assert isinstance(published, Piecewise) and published.breakpoints == (-4.0, -1.95, 3.0)
    # PUMA's published coefficients: the sextic overshoots just below x = 3 (0.0199).
    cert = published.max_error
    assert 0.0195 < cert < 0.0200
    x = torch.linspace(2.9, 3.0, 1001, dtype=torch.float64)
    assert float((published(x) - torch.nn.functional.gelu(x)).abs().max()) > 0.0195
    # Same segments and degrees, Remez coefficients: below 0.015 on [-8, 8] ...
    assert refit.breakpoints == published.breakpoints and refit.degree == published.degree
    assert refit.max_error < 0.015
    # ... and on outliers far beyond it (0 below -4, x above 3).
    wide = torch.linspace(-40.0, 40.0, 200_001, dtype=torch.float64)
    assert float((refit(wide) - torch.nn.functional.gelu(wide)).abs().max()) <= refit.max_error
    assert puma_gelu().to_json() == published.to_json()


def test_piecewise_json_round_trip() -> None:
    pw = catalog["gelu.puma"].approximation
    again = Piecewise.from_json(pw.to_json())
    assert again == pw
    x = torch.linspace(-10, 10, 1001, dtype=torch.float64)
    assert torch.equal(again(x), pw(x))


def test_exp_remez_beats_chebyshev_at_degree_8() -> None:
    entry = catalog["exp.minimax"].approximation
    cheb = fit(torch.exp, (-8.0, 0.0), 8, "chebyshev")
    assert entry.degree == 8 and entry.max_error < cheb.max_error


def test_iterative_errors_follow_theory() -> None:
    gs = catalog["reciprocal.goldschmidt"].approximation
    assert gs.max_error <= (1 / 17) ** (2**gs.iterations) * 1.01
    newton = catalog["reciprocal.newton"].approximation
    assert newton.max_error <= (1 / 17) ** (2**newton.iterations) * 1.01
    exp = catalog["exp.squaring"].approximation
    assert exp.max_error <= 2 * math.exp(-2) / 2**exp.squarings * 1.01
    he = catalog["reciprocal.goldschmidt_he"].approximation
    r = he.interval[0] / he.interval[1]
    e0 = (1 - r) ** 2 / (1 + 6 * r + r * r)
    assert he.max_error <= e0 ** (2**he.iterations) * 1.01 + 1e-12


def test_markdown_table_lists_every_entry() -> None:
    table = catalog.markdown()
    for name in NAMES:
        assert f"`{name}`" in table
    assert table.count("\n") == len(NAMES) + 1


@pytest.mark.slow  # make test-all: a heavier duplicate of a default check
def test_catalog_command_prints_table_and_plot(tmp_path) -> None:
    png = tmp_path / "errors.png"
    done = subprocess.run(
        [sys.executable, "-m", "approximations", "catalog", "--plot", str(png)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| `gelu.puma` |" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(
        [sys.executable, "-m", "approximations", "catalog", "--plot", str(tmp_path / "x.jpg")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.jpg").exists()


def test_unknown_name_says_what_is_known() -> None:
    with pytest.raises(KeyError, match=r"gelu\.puma"):
        catalog["gelu.nope"]
    assert np.isfinite(catalog["log.normalised"].max_error)


def test_readme_catalog_table_is_current() -> None:
    """The README shows the catalog as `make bench` last wrote it; a changed approximation
    must be followed by `make bench` (which rewrites that section)."""
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("<!-- catalog:start -->\n", 1)[1].split("\n<!-- catalog:end -->", 1)[0]
    assert section == catalog.markdown()

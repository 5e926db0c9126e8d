"""Accuracy of our approximations vs CrypTen's built-in functions, on the same points.

CrypTen runs for real (one party, its default 16-bit fixed point) in a fresh subprocess,
its outputs decoded exactly (`protocols.mpc.reveal.decode`); ours is evaluated in float64,
so its column is the approximation error alone. Measured: the max absolute or relative
error (per function) against the exact torch function, and CrypTen's over ours.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable

import torch
import torch.nn.functional as F

from approximations import catalog

POINTS = 20_001

# name -> (interval, error kind, our catalog entry, CrypTen expression on `x`, exact fn)
ACCURACY_CASES: dict[str, tuple[tuple[float, float], str, str, str, Callable]] = {
    "exp": ((-10.0, 0.0), "absolute", "exp.squaring", "x.exp()", torch.exp),
    "reciprocal": (
        (0.1, 100.0),
        "relative",
        "reciprocal.goldschmidt",
        "x.reciprocal()",
        lambda x: 1.0 / x,
    ),
    "rsqrt": ((0.01, 100.0), "relative", "rsqrt.newton", "x.inv_sqrt()", torch.rsqrt),
    "log": ((0.1, 100.0), "absolute", "log.normalised", "x.log()", torch.log),
    "sigmoid": ((-8.0, 8.0), "absolute", "sigmoid.minimax", "x.sigmoid()", torch.sigmoid),
    "tanh": ((-4.0, 4.0), "absolute", "tanh.minimax", "x.tanh()", torch.tanh),
    "erf": ((-4.0, 4.0), "absolute", "erf.minimax", "x.erf()", torch.erf),
    "gelu": ((-8.0, 8.0), "absolute", "gelu.puma_refit", "x * (1.702 * x).sigmoid()", F.gelu),
}

# The points: log-spaced where the interval spans more than two decades, else linear.
CRYPTEN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.reveal import decode
    crypten = import_crypten()
    crypten.init()
    cases = json.loads(sys.stdin.read())
    out = {}
    for name, (lo, hi, expr, points) in cases.items():
        if lo > 0 and hi / lo > 100:
            xs = torch.logspace(torch.log10(torch.tensor(lo)), torch.log10(torch.tensor(hi)),
                                points)
        else:
            xs = torch.linspace(lo, hi, points)
        x = crypten.cryptensor(xs)
        y = eval(expr)  # decoded exactly: CrypTen's own decode is off by 1 for some negatives
        out[name] = {"x": xs.tolist(), "y": decode(y.reveal(), int(y.encoder.scale)).tolist()}
    print(json.dumps(out))
    """
)


def max_error(got: torch.Tensor, want: torch.Tensor, kind: str) -> float:
    """The largest absolute (or, for `kind` "relative", relative) error, in float64."""
    err = (got.double() - want.double()).abs()
    if kind == "relative":
        err = err / want.double().abs()
    return float(err.max())


def run_crypten() -> dict[str, dict[str, list[float]]]:
    """CrypTen's built-in on every case's points, in a fresh subprocess: {name: {x, y}}."""
    cases = {n: (c[0][0], c[0][1], c[3], POINTS) for n, c in ACCURACY_CASES.items()}
    done = subprocess.run(
        [sys.executable, "-c", CRYPTEN_SCRIPT],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"CrypTen subprocess failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def accuracy_section() -> list[dict]:
    """One row per function: our catalog entry's and CrypTen's max error on the same points."""
    crypten_values = run_crypten()
    rows = []
    for name, (interval, kind, entry_name, expr, exact) in ACCURACY_CASES.items():
        x32 = torch.tensor(crypten_values[name]["x"], dtype=torch.float32)
        x = x32.double()  # the exact same points for both
        want = exact(x)
        ours = max_error(catalog[entry_name].approximation(x), want, kind)
        theirs = max_error(torch.tensor(crypten_values[name]["y"], dtype=torch.float64), want, kind)
        rows.append(
            {
                "function": name,
                "interval": list(interval),
                "error": kind,
                "ours": entry_name,
                "ours_max_error": ours,
                "crypten": f"crypten: {expr}",
                "crypten_max_error": theirs,
                "ratio_crypten_over_ours": theirs / ours if ours > 0 else None,
            }
        )
    return rows


__all__ = ["ACCURACY_CASES", "POINTS", "accuracy_section", "max_error", "run_crypten"]

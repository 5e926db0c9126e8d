"""`make bench`: side-by-side measurements, written as JSON and markdown.

Sections (each compares in one run, on the same inputs, and reports ratios):
0. The approximation catalog with certified errors (also written into the README).
1. Accuracy of our approximations vs CrypTen's built-in functions. CrypTen runs for real
   (one party, its default 16-bit fixed point) in a fresh subprocess; ours is evaluated in
   float64, so its column is the approximation error alone.
2. Plaintext training cost of the HE/MPC-friendly modules vs the torch functions they
   replace (forward + backward), as a time ratio.
3. MPC (`secinfer.bench_mpc`): our secure kernels and one whole encoder layer vs CrypTen's
   built-ins, for real with two parties and a dealer as separate processes: error, rounds,
   MB per party, dealer MB, seconds and ratios. Written to `bench/mpc.json` and
   `bench/mpc.md` (`--mpc-out`) and added to the README's bench section.

Absolute times on a 2-core machine are noise; the ratios are the figures to read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import approximations as A

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


def inputs(interval: tuple[float, float]) -> torch.Tensor:
    lo, hi = interval
    if lo > 0 and hi / lo > 100:
        return torch.logspace(torch.log10(torch.tensor(lo)), torch.log10(torch.tensor(hi)), POINTS)
    return torch.linspace(lo, hi, POINTS)


def max_error(got: torch.Tensor, want: torch.Tensor, kind: str) -> float:
    err = (got.double() - want.double()).abs()
    if kind == "relative":
        err = err / want.double().abs()
    return float(err.max())


def run_crypten() -> dict[str, dict[str, list[float]]]:
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
    crypten_values = run_crypten()
    rows = []
    for name, (interval, kind, entry_name, expr, exact) in ACCURACY_CASES.items():
        x32 = torch.tensor(crypten_values[name]["x"], dtype=torch.float32)
        x = x32.double()  # the exact same points for both
        want = exact(x)
        ours = max_error(A.catalog[entry_name].approximation(x), want, kind)
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


def median_seconds(fn: Callable[[], None], repeats: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_cost_section() -> list[dict]:
    torch.manual_seed(0)
    hidden = torch.randn(32, 64, 256, requires_grad=True)
    scores = torch.randn(32, 4, 64, 64, requires_grad=True)
    ln = torch.nn.LayerNorm(256)
    poly_ln = A.PolyLayerNorm.from_layer_norm(ln, rsqrt="newton")
    pairs = [
        (
            "GELU",
            lambda: F.gelu(hidden),
            lambda: A.gelu(hidden, "puma_refit"),
            "PolyGELU puma_refit",
        ),
        (
            "softmax",
            lambda: torch.softmax(scores, -1),
            lambda: A.power_softmax(scores, p=4),
            "PowerSoftmax p=4",
        ),
        ("LayerNorm", lambda: ln(hidden), lambda: poly_ln(hidden), "PolyLayerNorm rsqrt=newton"),
    ]
    rows = []
    for name, exact, ours, label in pairs:

        def step(f: Callable[[], torch.Tensor]) -> Callable[[], None]:
            return lambda: f().square().mean().backward()

        t_exact = median_seconds(step(exact))
        t_ours = median_seconds(step(ours))
        rows.append(
            {
                "op": name,
                "ours": label,
                "torch_seconds": t_exact,
                "ours_seconds": t_ours,
                "ratio_ours_over_torch": t_ours / t_exact,
            }
        )
    return rows


def markdown(accuracy: list[dict], cost: list[dict]) -> str:
    lines = [
        "**Approximation accuracy, ours vs CrypTen's built-ins** (same points; ours in float64 "
        "= approximation error alone; CrypTen = its built-in in its 16-bit fixed point):",
        "",
        "| function | interval | error | ours | ours max error | CrypTen built-in | "
        "CrypTen max error | CrypTen / ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in accuracy:
        ratio = r["ratio_crypten_over_ours"]
        lines.append(
            f"| {r['function']} | [{r['interval'][0]:g}, {r['interval'][1]:g}] | {r['error']} "
            f"| `{r['ours']}` | {r['ours_max_error']:.2e} | `{r['crypten'][9:]}` "
            f"| {r['crypten_max_error']:.2e} | {'-' if ratio is None else f'{ratio:.3g}x'} |"
        )
    lines += [
        "",
        "**Plaintext training cost** (forward + backward, median of 7; ratio to torch):",
        "",
        "| op | ours | time ratio ours / torch |",
        "|---|---|---|",
    ]
    for r in cost:
        lines.append(f"| {r['op']} | {r['ours']} | {r['ratio_ours_over_torch']:.2f} |")
    return "\n".join(lines)


def update_readme(readme: Path, section: str, table: str) -> bool:
    """Replace the text between <!-- section:start --> and <!-- section:end -->."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m secinfer.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default="bench-results", help="directory for JSON and markdown")
    parser.add_argument(
        "--mpc-out", default="bench", help="directory for the MPC section's mpc.json and mpc.md"
    )
    parser.add_argument(
        "--readme", default="README.md", help="README whose bench section to refresh"
    )
    parser.add_argument("--no-readme", action="store_true", help="do not touch the README")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--mpc-only", action="store_true", help="run the MPC section only")
    which.add_argument("--no-mpc", action="store_true", help="skip the MPC section")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="MPC section at tiny shapes, to mpc.quick.* (checks that it runs, gives no "
        "figures; the README is left alone)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.no_readme = True
    torch.set_num_threads(2)
    out = Path(args.out)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    sections: list[tuple[str, str]] = []  # (README section, markdown)
    if not args.mpc_only:
        catalog_table = A.catalog.markdown()
        accuracy = accuracy_section()
        cost = training_cost_section()
        table = markdown(accuracy, cost)
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "meta": meta,
            "catalog": A.catalog.rows(),
            "accuracy_vs_crypten": accuracy,
            "training_cost": cost,
        }
        (out / "bench.json").write_text(json.dumps(record, indent=2))
        (out / "bench.md").write_text(f"{catalog_table}\n\n{table}\n")
        print(table)
        sections += [("bench", table), ("catalog", catalog_table)]
    if not args.no_mpc:
        from secinfer import bench_mpc

        mpc = bench_mpc.run(quick=args.quick)
        mpc["meta"] = meta
        mpc_table = bench_mpc.write(mpc, Path(args.mpc_out))
        print(f"\n{mpc_table}")
        stem = Path(args.mpc_out) / ("mpc.quick" if args.quick else "mpc")
        print(
            f"MPC section: {mpc['seconds']:.0f} s; wrote {stem}.json and {stem}.md",
            file=sys.stderr,
        )
        if sections:
            sections[0] = ("bench", f"{sections[0][1]}\n\n{mpc_table}")
        else:
            sections.append(("bench-mpc", mpc_table))
    elif sections and (Path(args.mpc_out) / "mpc.json").is_file():
        # keep the README's MPC table: the last full run's, saying when it was measured
        previous = json.loads((Path(args.mpc_out) / "mpc.json").read_text())
        date = previous.get("meta", {}).get("date", "an earlier run")
        stored = (Path(args.mpc_out) / "mpc.md").read_text().strip()
        note = f"_MPC tables from the run of {date} (`--no-mpc` this time)._"
        sections[0] = ("bench", f"{sections[0][1]}\n\n{note}\n\n{stored}")
    if not args.no_readme:
        readme = Path(args.readme)
        for section, text in sections:
            if update_readme(readme, section, text):
                print(f"updated the {section} section of {readme}", file=sys.stderr)
            elif section == "bench-mpc":
                print(
                    f"{readme} has no <!-- bench-mpc:start/end --> section: run the full "
                    "bench to put the MPC table into its bench section",
                    file=sys.stderr,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: side-by-side measurements, written as JSON and markdown.

Sections (each compares in one run, on the same inputs, and reports ratios; the code is in
the `benchmarks` package, run from the repository root):
0. The approximation catalog with certified errors (also written into the README).
1. Accuracy of our approximations vs CrypTen's built-in functions (`benchmarks.accuracy`).
   CrypTen runs for real (one party, its default 16-bit fixed point) in a fresh subprocess;
   ours is evaluated in float64, so its column is the approximation error alone.
2. Plaintext training cost of the HE/MPC-friendly modules vs the torch functions they
   replace (forward + backward), as a time ratio (`benchmarks.training_cost`).
3. MPC (`benchmarks.records.run`): our secure kernels and one whole encoder layer vs
   CrypTen's built-ins, for real with two parties and a dealer as separate processes: error,
   rounds, MB per party, dealer MB, seconds and ratios. Written to `bench/mpc.json` and
   `bench/mpc.md` (`--mpc-out`) and added to the README's bench section.

Absolute times on a 2-core machine are noise; the ratios are the figures to read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from approximations import catalog
from benchmarks import plain_tables
from benchmarks.accuracy import accuracy_section
from benchmarks.training_cost import training_cost_section
from secinfer.report.files import dumps_strict


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


def _write_record(
    record: dict[str, Any], markdown: Any, meta: dict[str, Any], args: Any, name: str
) -> str:
    """`record` (with `meta`) as bench/NAME.json and its table as NAME.md (NAME.quick.*
    with --quick); prints the table and returns it."""
    record["meta"] = meta
    stem = Path(args.mpc_out) / (f"{name}.quick" if args.quick else name)
    stem.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(record)
    Path(f"{stem}.json").write_text(dumps_strict(record))
    Path(f"{stem}.md").write_text(table + "\n")
    print(f"\n{table}")
    print(f"{name}: {record['seconds']:.0f} s; wrote {stem}.json and {stem}.md", file=sys.stderr)
    return table


def _generation(meta: dict[str, Any], args: Any) -> str:
    """Private generation under mpc, with the cache against the growing prefix
    (`benchmarks.generation`), to bench/generation.*."""
    from benchmarks import generation

    record = generation.run(quick=args.quick)
    return _write_record(record, generation.markdown, meta, args, "generation")


def _channels(meta: dict[str, Any], args: Any) -> str:
    """What mutual TLS costs against the plain channel, each link measured in one run
    (`benchmarks.he_tls`, and `benchmarks.mpc_tls` where it exists), to bench/tls.*."""
    import importlib

    from benchmarks import he_tls

    record: dict[str, Any] = {"he": he_tls.run(quick=args.quick)}
    tables = [he_tls.markdown(record["he"])]
    try:
        mpc_tls = importlib.import_module("benchmarks.mpc_tls")
    except ModuleNotFoundError:
        tables.append(
            "MPC links: no TLS channel yet (gloo sockets in clear; see the threat model)."
        )
    else:
        record["mpc"] = mpc_tls.run(quick=args.quick)
        tables.append(mpc_tls.markdown(record["mpc"]))
    record["seconds"] = sum(r.get("seconds", 0.0) for r in record.values() if isinstance(r, dict))
    return _write_record(record, lambda r: "\n\n".join(tables), meta, args, "tls")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
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
    which.add_argument("--he-only", action="store_true", help="run the HE section only")
    parser.add_argument("--no-he", action="store_true", help="skip the HE section")
    parser.add_argument(
        "--no-channels", action="store_true", help="skip the TLS-vs-plain channel section"
    )
    which.add_argument(
        "--channels-only", action="store_true", help="run the TLS-vs-plain channel section only"
    )
    which.add_argument(
        "--generation-only",
        action="store_true",
        help="run the private generation bench only (part of the MPC section)",
    )
    which.add_argument(
        "--soft-only",
        action="store_true",
        help="run the SOFT attention table only (digits, under MPC and HE)",
    )
    which.add_argument(
        "--eval-only",
        action="store_true",
        help="run the private-evaluation tables only (each loss under MPC and under HE)",
    )
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
    if args.generation_only:
        sections.append(("bench-generation", _generation(meta, args)))
        args.no_he = args.no_channels = True
    if args.he_only or args.channels_only:
        args.no_mpc = True
    if args.channels_only:
        args.no_he = True
    only = (
        args.mpc_only or args.he_only or args.channels_only or args.generation_only
        or args.eval_only or args.soft_only
    )  # fmt: skip
    if args.soft_only:
        args.no_mpc = args.no_he = args.no_channels = True
    if args.eval_only:
        from benchmarks import he_loss_costs, loss_costs

        evaluation = loss_costs.run(quick=args.quick)
        sections.append(
            ("bench-eval", _write_record(evaluation, loss_costs.markdown, meta, args, "eval"))
        )
        he_eval = he_loss_costs.run(quick=args.quick)
        sections.append(
            ("bench-eval-he", _write_record(he_eval, he_loss_costs.markdown, meta, args, "eval_he"))
        )
        args.no_mpc = args.no_he = args.no_channels = True
    if not only:
        catalog_table = catalog.markdown()
        accuracy = accuracy_section()
        cost = training_cost_section()
        table = plain_tables.markdown(accuracy, cost)
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "meta": meta,
            "catalog": catalog.rows(),
            "accuracy_vs_crypten": accuracy,
            "training_cost": cost,
        }
        (out / "bench.json").write_text(dumps_strict(record))
        (out / "bench.md").write_text(f"{catalog_table}\n\n{table}\n")
        print(table)
        sections += [("bench", table), ("catalog", catalog_table)]
    if not args.no_mpc and not args.generation_only:
        from benchmarks import records

        mpc = records.run(quick=args.quick)
        mpc["meta"] = meta
        mpc_table = records.write(mpc, Path(args.mpc_out))
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
    if not args.no_mpc and not args.generation_only:
        from benchmarks import loss_costs

        evaluation = loss_costs.run(quick=args.quick)
        eval_table = _write_record(evaluation, loss_costs.markdown, meta, args, "eval")
        sections.append(("bench-eval", eval_table))
        sections.append(("bench-generation", _generation(meta, args)))
    elif (
        not args.generation_only
        and sections
        and sections[0][0] == "bench"
        and (Path(args.mpc_out) / "mpc.json").is_file()
    ):
        # keep the README's MPC table: the last full run's, saying when it was measured
        previous = json.loads((Path(args.mpc_out) / "mpc.json").read_text())
        date = previous.get("meta", {}).get("date", "an earlier run")
        stored = (Path(args.mpc_out) / "mpc.md").read_text().strip()
        note = f"_MPC tables from the run of {date} (`--no-mpc` this time)._"
        sections[0] = ("bench", f"{sections[0][1]}\n\n{note}\n\n{stored}")
    if not args.no_he and not args.mpc_only:
        from benchmarks import he_hiding, he_layer, he_matmul, he_model

        he = he_matmul.run(quick=args.quick)
        he["model"] = he_model.run(quick=args.quick)
        he["hiding"] = he_hiding.run(quick=args.quick, digits_40=he["model"])
        he["layer"] = he_layer.run(quick=args.quick)
        if not args.quick:
            he["layer_base"] = he_layer.run(packings=("auto",), size=he_layer.BASE)
        he["meta"] = meta
        he_table = he_matmul.write(he, Path(args.mpc_out)) + "\n\n" + he_model.markdown(he["model"])
        he_table += "\n\n" + he_hiding.markdown(he["hiding"])
        he_table += "\n\n" + he_layer.markdown(he["layer"])
        if "layer_base" in he:
            he_table += "\n\n" + he_layer.base_markdown(he["layer_base"])
        (Path(args.mpc_out) / ("he.quick.md" if args.quick else "he.md")).write_text(
            he_table + "\n"
        )
        print(f"\n{he_table}")
        sections.append(("bench-he", he_table))
        from benchmarks import he_loss_costs

        he_eval = he_loss_costs.run(quick=args.quick)
        he_eval_table = _write_record(he_eval, he_loss_costs.markdown, meta, args, "eval_he")
        sections.append(("bench-eval-he", he_eval_table))
    if not args.no_channels and not args.mpc_only and not args.he_only:
        sections.append(("bench-tls", _channels(meta, args)))
    if args.soft_only or not only:
        from benchmarks import soft_attention

        soft = soft_attention.run(quick=args.quick)
        sections.append(
            ("bench-soft", _write_record(soft, soft_attention.markdown, meta, args, "soft"))
        )
    if not args.no_readme:
        readme = Path(args.readme)
        for section, text in sections:
            if update_readme(readme, section, text):
                print(f"updated the {section} section of {readme}", file=sys.stderr)
            elif section in (
                "bench-mpc",
                "bench-he",
                "bench-eval",
                "bench-eval-he",
                "bench-generation",
                "bench-tls",
                "bench-soft",
            ):
                print(
                    f"{readme} has no <!-- {section}:start/end --> section to update",
                    file=sys.stderr,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

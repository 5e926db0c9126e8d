"""`python -m approximations catalog [--json] [--plot FILE.png]`: print the catalog."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m approximations",
        description="MPC/HE-friendly approximations with certified errors.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cat = sub.add_parser("catalog", help="print every named approximation as a markdown table")
    cat.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    cat.add_argument("--plot", metavar="FILE.png", help="also draw the error curves to a PNG")
    args = parser.parse_args(argv)
    if args.plot and not args.plot.lower().endswith(".png"):
        print(f"error: --plot {args.plot}: give a file name ending in .png", file=sys.stderr)
        return 2

    from approximations.library import catalog

    if args.json:
        print(json.dumps(catalog.rows(), indent=2))
    else:
        print(catalog.markdown())
    if args.plot:
        from approximations.report import plot_errors

        print(f"wrote {plot_errors(args.plot)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tune the bundled digits model with SOFT, softmax-free attention, and save it.

Loads a bundled digits model (`--base digits`: exact GELU and LayerNorm, for `-b mpc`;
`--base digits_he`: quad GELU and polynomial LayerNorm, for `-b he`, with SOFT's "kernel"
order, which the he engine runs cheaper), rebuilds its attention with
`approximations.convert(model, attention="soft", attention_options=...)`, fine-tunes it by
distillation from the softmax model (`secinfer.zoo.soft.soft_digits`), prints the test
accuracy of both and saves the result into --out as `<name>.safetensors` (weights,
architecture and conversion), `<name>.json` and `<name>.pt2`:

    python examples/train_soft_attention.py --out my-soft/ --landmarks 4 --iterations 8
    secinfer run my-soft/digits_soft.safetensors -b mpc
    python examples/train_soft_attention.py --out my-soft/ --base digits_he
    secinfer run my-soft/digits_he_soft.safetensors -b he

A user mistake (an option without its value, a landmark count that does not divide the
16 tokens) is one `error:` line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NoReturn

from approximations.errors import ApproximationError
from secinfer.zoo.digits import accuracy, export_program, load_model, load_split, save_model
from secinfer.zoo.soft import EPOCHS, soft_digits

DATA = Path(__file__).resolve().parents[1] / "secinfer" / "data"
TOKENS = 16


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit 2 (argparse prints the usage first)."""
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the saved model")
    ap.add_argument("--base", choices=("digits", "digits_he"), default="digits")
    ap.add_argument("--landmarks", type=int, default=4, help="Nystrom landmarks (divide 16)")
    ap.add_argument("--iterations", type=int, default=8, help="Newton-Schulz iterations")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="fine-tuning epochs")
    ap.add_argument("--name", default=None, help="file stem (default <base>_soft)")
    args = ap.parse_args(argv)
    if args.landmarks < 1 or TOKENS % args.landmarks:
        ap.error(f"--landmarks {args.landmarks}: must divide the digits model's {TOKENS} tokens")
    if args.iterations < 1 or args.epochs < 1:
        ap.error("--iterations and --epochs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    _, _, test_x, test_y = load_split(0)
    base = DATA / f"{args.base}.safetensors"
    options = {"landmarks": args.landmarks, "iterations": args.iterations}
    try:
        target = "he" if args.base == "digits_he" else "mpc"
        model, record = soft_digits(base, DATA / "digits.safetensors", options=options,
                                    target=target, epochs=args.epochs)  # fmt: skip
    except ApproximationError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    before = accuracy(load_model(base), test_x, test_y)
    after = accuracy(model, test_x, test_y)
    seconds = time.perf_counter() - began
    print(f"{args.base}: softmax attention {before:.4f}, SOFT {after:.4f} "
          f"({100 * (after - before):+.2f} points; {seconds:.0f} s)")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (args.name or f"{args.base}_soft")
    info = {"base": base.name, "epochs": args.epochs, "test_accuracy": after,
            "test_accuracy_softmax": before}  # fmt: skip
    print(f"saved {save_model(model, stem, record, info)} and {export_program(model, stem)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

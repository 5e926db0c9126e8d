"""Train the bundled digits transformer and its HE/MPC-friendly twin.

1. trains the plain model (`secinfer.zoo.digits.DigitsTransformer`: exact GELU, softmax and
   LayerNorm) on scikit-learn's digits set;
2. converts a copy with `approximations.convert(plain, target="he", samples=train_x)`:
   polynomial GELU, power-softmax and (by default) LayerNorm whose inverse square root is
   polynomial-only, every interval calibrated per site from the training images (no
   variance range computed by hand);
3. fine-tunes the converted model, distilling from the plain model's logits
   (KL at temperature T, mixed with cross-entropy on the labels);
4. prints both test accuracies and saves both models into --out as
   `<name>.safetensors` (weights + architecture + conversion in its metadata),
   `<name>.json` (the same record plus training facts) and `<name>.pt2` (torch.export).

    python examples/train_he_friendly.py --out my-digits/

The bundled models (`secinfer/data/`) are rewritten only by `make bundled-models`, which
adds `--update-bundled`; without it, an --out inside that folder is refused.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from approximations.calibration import Range, layer_norm_input
from approximations.conversion import Replacement, calibration_record, convert
from approximations.functions import rsqrt_approximation
from approximations.modules import PolyLayerNorm
from secinfer.zoo.digits import (
    DigitsConfig,
    DigitsTransformer,
    accuracy,
    export_program,
    load_model,
    load_split,
    predict,
    save_model,
)
from secinfer.zoo.training import ce_loss, distill_loss, fit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see --help)."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("he-friendly-digits"),
        help="directory for the model files (created; not the package's bundled models)",
    )
    ap.add_argument(
        "--update-bundled",
        action="store_true",
        help="allow --out to be the package's bundled-model folder (make bundled-models)",
    )
    ap.add_argument("--epochs", type=int, default=60, help="epochs for the plain model")
    ap.add_argument(
        "--ft-epochs", type=int, default=40, help="fine-tuning epochs for the converted model"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed for split, init and batches")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (plain)")
    ap.add_argument("--ft-lr", type=float, default=1e-3, help="peak learning rate (fine-tune)")
    ap.add_argument(
        "--plain",
        type=Path,
        default=None,
        help="start from this saved plain model (.safetensors) instead of training one",
    )
    ap.add_argument(
        "--gelu",
        default="quad",
        help="GELU approximation for convert (a pure polynomial for HE: quad, minimax)",
    )
    ap.add_argument("--p", type=int, default=4, help="power-softmax exponent (even)")
    ap.add_argument(
        "--normalizer",
        default="mean",
        choices=["sum", "mean"],
        help="power-softmax normaliser ('mean' is the paper's inference form)",
    )
    ap.add_argument(
        "--softmax-eps",
        type=float,
        default=1e-3,
        help="power-softmax epsilon in the denominator (of the scores divided by their "
        "calibrated scale)",
    )
    ap.add_argument(
        "--layernorm",
        default="poly",
        choices=["poly", "exact"],
        help="rsqrt of the converted LayerNorm, on each LayerNorm's calibrated interval "
        "('exact' keeps nn.LayerNorm)",
    )
    ap.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
    ap.add_argument(
        "--alpha",
        type=float,
        default=0.7,
        help="weight of the distillation term (1 - alpha on cross-entropy)",
    )
    ap.add_argument("--name", default="digits", help="file stem; the converted model is <name>_he")
    args = ap.parse_args(argv)
    if _inside(args.out, BUNDLED) and not args.update_bundled:
        ap.error(
            f"--out {args.out} is the package's bundled-model folder; choose another folder, "
            "or run `make bundled-models` to replace the bundled models on purpose"
        )
    return args


BUNDLED = Path(__file__).resolve().parents[1] / "secinfer" / "data"


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies inside it (symbolic links resolved)."""
    resolved = path.resolve()
    return resolved == folder or folder in resolved.parents


def seed_everything(seed: int) -> None:
    """Fix the Python, NumPy and torch seeds and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def convert_for_he(
    plain: nn.Module, args: argparse.Namespace, samples: torch.Tensor
) -> tuple[nn.Module, list[Replacement], dict[str, Any]]:
    """`approximations.convert(plain, target="he", samples=...)` with the chosen methods;
    returns the converted copy, its replacements and the JSON record saved with the model
    (convert's arguments plus `calibration_record`, so that loading replays the same
    per-site intervals without the samples)."""
    options: dict[str, Any] = {
        "target": "he",
        "gelu": args.gelu,
        "softmax": "power",
        "softmax_options": {"p": args.p, "normalizer": args.normalizer, "eps": args.softmax_eps},
        "layernorm": None if args.layernorm == "exact" else args.layernorm,
    }
    he, replaced = convert(plain, **options, samples=samples)
    return he, replaced, {**options, "calibration": calibration_record(replaced)}


def print_calibration(replaced: list[Replacement]) -> None:
    """One line per site: what the training images produced and the interval chosen."""
    for r in replaced:
        seen = f"[{r.observed[0]:.3g}, {r.observed[1]:.3g}]" if r.observed else "-"
        chosen = f"[{r.interval[0]:.3g}, {r.interval[1]:.3g}]" if r.interval else "-"
        extra = f", scale {r.scale:g}" if r.scale is not None else ""
        error = f", max error {r.max_error:.2e}" if r.max_error is not None else ""
        print(f"  {r.path:24s} {r.kind:9s} seen {seen:22s} interval {chosen}{extra}{error}")


@torch.no_grad()
def layer_norm_ranges(model: nn.Module, x: torch.Tensor) -> dict[str, Range]:
    """var + eps seen by each converted LayerNorm of `model` on `x`."""
    seen: dict[str, Range] = {}

    def record(path: str) -> Any:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], _out: Any) -> None:
            seen.setdefault(path, Range()).add(layer_norm_input(module, args[0]))

        return hook

    handles = [
        m.register_forward_hook(record(path))
        for path, m in model.named_modules()
        if isinstance(m, PolyLayerNorm)
    ]
    try:
        predict(model, x)
    finally:
        for h in handles:
            h.remove()
    return seen


def check_export(model: nn.Module, path: Path, x: torch.Tensor) -> float:
    """Max |logit difference| between the saved .pt2 program at `path` and `model` on `x`."""
    ep = torch.export.load(str(path))
    with torch.no_grad():
        return (ep.module()(x) - model(x)).abs().max().item()


def save_all(
    model: DigitsTransformer, stem: Path, conversion: dict | None, info: dict, test_x: torch.Tensor
) -> None:
    """Save safetensors + json + pt2, reload both forms and check they reproduce `model`."""
    st = save_model(model, stem, conversion=conversion, info=info)
    pt2 = export_program(model, stem)
    reloaded = load_model(st)
    with torch.no_grad():
        d_st = (reloaded(test_x) - model(test_x)).abs().max().item()
    d_pt2 = check_export(model, pt2, test_x)
    for p in (st, stem.with_suffix(".json"), pt2):
        print(f"  wrote {p} ({p.stat().st_size / 1024:.1f} KiB)")
    print(f"  reload max |diff|: safetensors {d_st:.2e}, pt2 {d_pt2:.2e}")
    if d_st > 1e-5 or d_pt2 > 1e-5:
        raise RuntimeError(f"{stem}: reloaded model does not reproduce the trained one")


def main(argv: list[str] | None = None) -> None:
    """Train, convert, fine-tune, report and save (see the module docstring)."""
    args = parse_args(argv)
    t0 = time.perf_counter()
    seed_everything(args.seed)
    train_x, train_y, test_x, test_y = load_split(args.seed)
    cfg = DigitsConfig()
    print(f"config: {cfg.to_json()}  train {len(train_x)}  test {len(test_x)}")

    if args.plain is not None:
        plain = load_model(args.plain)
        print(f"plain model loaded from {args.plain}")
    else:
        plain = DigitsTransformer(cfg)
        fit(plain, (train_x, train_y), args.epochs, args.lr, args.seed, ce_loss)
    acc_plain = accuracy(plain, test_x, test_y)
    t_plain = time.perf_counter() - t0
    print(f"plain model: test accuracy {acc_plain:.4f}  ({t_plain:.1f} s)")

    he, replaced, conversion = convert_for_he(plain, args, train_x)
    print("calibrated on the training images (per site):")
    print_calibration(replaced)
    acc_before = accuracy(he, test_x, test_y)
    print(f"converted, before fine-tuning: test accuracy {acc_before:.4f}")

    loss = distill_loss(plain, args.temperature, args.alpha)
    fit(he, (train_x, train_y), args.ft_epochs, args.ft_lr, args.seed + 1, loss)
    acc_he = accuracy(he, test_x, test_y)
    agree = (predict(plain, test_x).argmax(-1) == predict(he, test_x).argmax(-1)).float().mean()
    print(
        f"converted, after fine-tuning:  test accuracy {acc_he:.4f} "
        f"(plain {acc_plain:.4f}, diff {100 * (acc_he - acc_plain):+.2f} points, "
        f"agreement {agree.item():.4f})"
    )
    rsqrt_record: dict[str, Any] = {}
    after = layer_norm_ranges(he, torch.cat([train_x, test_x]))
    for r in replaced:
        if r.kind != "layernorm" or r.interval is None:
            continue
        lo, hi = r.interval
        inside = lo <= after[r.path].lo and after[r.path].hi <= hi
        rsqrt = rsqrt_approximation("poly", (lo, hi))
        assert rsqrt is not None
        print(
            f"  {r.path}: var+eps after fine-tuning (train+test) "
            f"[{after[r.path].lo:.3g}, {after[r.path].hi:.3g}], within [{lo:g}, {hi:g}]: "
            f"{'yes' if inside else 'NO'}; rsqrt degree {rsqrt.initial_degree} guess + "
            f"{rsqrt.iterations} Newton steps, relative error {rsqrt.max_error:.2e}"
        )
        rsqrt_record[r.path] = rsqrt.to_dict() | {"max_error": rsqrt.max_error}

    common = {"seed": args.seed, "train_rows": len(train_x), "test_rows": len(test_x)}
    args.out.mkdir(parents=True, exist_ok=True)
    print("saving:")
    save_all(
        plain,
        args.out / args.name,
        None,
        {**common, "epochs": args.epochs, "test_accuracy": acc_plain},
        test_x,
    )
    save_all(
        he,
        args.out / f"{args.name}_he",
        conversion,
        {
            **common,
            "layernorm_rsqrt": rsqrt_record,
            "teacher": f"{args.name}.safetensors",
            "ft_epochs": args.ft_epochs,
            "temperature": args.temperature,
            "alpha": args.alpha,
            "test_accuracy_before_finetune": acc_before,
            "test_accuracy": acc_he,
        },
        test_x,
    )
    print(f"total time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()

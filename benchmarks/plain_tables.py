"""Markdown of the plaintext sections: approximation accuracy vs CrypTen's built-ins, and
the training-cost ratios."""

from __future__ import annotations


def markdown(accuracy: list[dict], cost: list[dict]) -> str:
    """Both tables, accuracy first (the README's bench section starts with them)."""
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


__all__ = ["markdown"]

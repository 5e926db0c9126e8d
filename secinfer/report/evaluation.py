"""An evaluation report as the table printed to the terminal."""

from __future__ import annotations

from typing import Any


def table(report: dict[str, Any]) -> str:
    """The terminal table: each loss and accuracy, secure vs plaintext, relative error."""
    rows = [f"| metric | {report['backend']} | plain | relative error |", "|---|---|---|---|"]
    for name, pair in report["losses"].items():
        rel = abs(pair["secure"] - pair["plain"]) / max(abs(pair["plain"]), 1e-12)
        rows.append(f"| {name} | {pair['secure']:.6g} | {pair['plain']:.6g} | {rel:.2e} |")
    acc = report["accuracy"]
    rows.append(f"| accuracy | {acc['secure']:.4f} | {acc['plain']:.4f} | - |")
    lines = [*rows, f"{report['examples']} examples in {report['seconds']:.2f} s"]
    if report.get("plan_for") and report["backend"] == "approx":
        lines.append(f"plan for: {report['plan_for']} (approx runs that backend's approximations)")
    if "comm" in report:
        sent = report["comm"]["bytes_sent"]
        lines.append(
            f"revealed to the {report['reveal_to']} only (the aggregate); sent: model owner "
            f"{sent['model_owner'] / 1e6:.1f} MB, data owner {sent['data_owner'] / 1e6:.1f} MB, "
            + (
                f"{report['comm']['rounds']} rounds"
                if "rounds" in report["comm"]
                else f"{report['comm']['refreshes']} refreshes"
            )
        )
    if "estimates" in report:
        from secinfer.report.mpc import estimate_line

        comm = report["comm"]
        counted = (
            f"{comm['rounds']} rounds" if "rounds" in comm else f"{comm['round_trips']} round trips"
        )
        lines.append(estimate_line(report["estimates"], counted))
    return "\n".join(lines)

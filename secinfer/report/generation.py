"""The report of a generation (`secinfer generate`): tokens, text, cost per token, and how
the backend's tokens compare with plaintext greedy decoding."""

from __future__ import annotations

from typing import Any


def generation_report(
    generation: Any, model: str, text: str | None, reference: list[int] | None
) -> dict[str, Any]:
    """A JSON-ready report of `generation` (`secinfer.launch.generate.Generation`).

    `reference`: plaintext greedy tokens for the same prompt and length, when the backend's
    own records hold no lockstep comparison (the secure backends, whose logits stay
    secret); `text`: the decoded new tokens, when the model has a tokenizer."""
    steps = generation.steps
    plain = [s.get("plain_token") for s in steps]
    if reference is None and all(t is not None for t in plain):
        reference = [int(t) for t in plain]
    tokens = list(generation.tokens)
    report: dict[str, Any] = {
        "backend": generation.backend,
        "model": model,
        "prompt_tokens": len(generation.prompt),
        "new_tokens": len(tokens),
        "tokens": tokens,
        "text": text,
        "stopped_by": generation.stopped_by,
        "seconds": generation.prefill.get("seconds", 0.0) + sum(s["seconds"] for s in steps),
        "prefill": generation.prefill,
        "steps": steps,
    }
    if generation.plan_for is not None:
        report["plan_for"] = generation.plan_for
    report["sampling"] = generation.sampling.to_dict()
    if reference is not None:
        agree = 0
        for ours, theirs in zip(tokens, reference, strict=False):
            if ours != theirs:
                break
            agree += 1
        report["plaintext"] = {
            "tokens": reference,
            "equal_prefix": agree,
            "equal": tokens == reference[: len(tokens)] and len(tokens) <= len(reference),
        }
    errors = [s["max_abs_error"] for s in steps if "max_abs_error" in s]
    if errors:
        report["logits_max_abs_error"] = max(errors)
    return report


def generation_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    backend = report["backend"]
    if "plan_for" in report:
        backend += f" (plan for {report['plan_for']})"
    steps = report["steps"]
    later = [s["seconds"] for s in steps[1:]]
    per_token = f", {sum(later) / len(later):.2f} s a token after the first" if later else ""
    lines = [
        f"backend {backend}: {report['new_tokens']} new tokens after a prompt of "
        f"{report['prompt_tokens']} in {report['seconds']:.2f} s (prefill "
        f"{report['prefill']['seconds']:.2f} s{per_token}); stopped by "
        f"{report['stopped_by'].replace('_', ' ')}"
    ]
    plain = report.get("plaintext")
    sampling = report.get("sampling", {"method": "greedy"})
    rule = "greedy"
    if sampling["method"] == "sample":
        rule = f"sampling at T={sampling['temperature']:g}, seed {sampling['seed']}"
        if sampling.get("top_k") is not None:
            rule += f", top-k {sampling['top_k']}"
        lines.append(f"sampled: {rule} (Gumbel noise drawn by the data owner)")
        rule = "sampling (same noise)"
    if plain is not None and backend != "plain":
        total = report["new_tokens"]
        if plain["equal"]:
            lines.append(f"tokens equal to plaintext {rule}: {total}/{total}")
        else:
            lines.append(
                f"tokens equal to plaintext {rule}: the first {plain['equal_prefix']} of "
                f"{total} (then plaintext picks {plain['tokens'][plain['equal_prefix']]})"
            )
    if "logits_max_abs_error" in report:
        lines.append(
            f"logits max abs error vs plaintext on the same tokens: "
            f"{report['logits_max_abs_error']:.2e} (largest over the steps)"
        )
    if report.get("text") is not None:
        lines.append(f"text: {report['text']!r}")
    lines.append(f"tokens: {report['tokens']}")
    return "\n".join(lines)


__all__ = ["generation_report", "generation_summary"]

"""The `plain` backend: every op exactly as torch computes it (the reference)."""

from __future__ import annotations

from typing import Any

from secinfer.core.registry import REGISTRY, Call, register_all


def exact(call: Call) -> Any:
    return call.run_exact()


register_all("plain", exact, categories=tuple({spec.category for spec in REGISTRY.values()}))

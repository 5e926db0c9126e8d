"""The local backends, `plain` (torch as exported) and `approx` (float64 with the plan's
approximations): both run in this process on the core's executor, with no parties."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from secinfer.backends.base import RunOptions
from secinfer.core.graph import Graph
from secinfer.core.plan import Plan
from secinfer.load.values import ValueLimit


@dataclass(frozen=True)
class LocalBackend:
    """`plain` or `approx`: any finite value, any model the registry covers."""

    name: str
    secure: bool = False

    def value_limit(self, options: RunOptions) -> ValueLimit:
        return ValueLimit(self.name)

    def notices(self, options: RunOptions) -> list[str]:
        return []

    def check(self, graph: Graph, plan: Plan, options: RunOptions | None = None) -> None:
        return None

    def summary(self, report: dict[str, Any]) -> str:
        if self.name == "plain":
            return ""
        return f"plan for: {report['plan_for']} (approx runs that backend's approximations)"


PLAIN = LocalBackend("plain")
APPROX = LocalBackend("approx")

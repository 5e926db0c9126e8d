"""Which user inputs are token ids: a question about the graph that both secure backends
ask (the mpc backend shares such inputs as one-hot rows, the he backend encrypts them
one-hot or embeds them on the client)."""

from __future__ import annotations

from secinfer.core.graph import Graph, op_name

PASS_THROUGH = (
    "aten.view",
    "aten.reshape",
    "aten._unsafe_view",
    "aten.unsqueeze",
    "aten.clone",
    "aten._to_copy",
    "aten.alias",
    "aten.detach",
    "aten.contiguous",
)
"""Ops between a user input and an embedding lookup that keep it the lookup's indices."""


def token_id_inputs(graph: Graph) -> dict[str, int]:
    """User inputs that reach an embedding lookup as its indices (through PASS_THROUGH ops
    only) -> the table's rows."""
    found: dict[str, int] = {}
    for fx_node in graph.fx_graph.nodes:
        if fx_node.op != "call_function" or op_name(fx_node.target) != "aten.embedding":
            continue
        index = fx_node.args[1]
        while index.op == "call_function" and op_name(index.target) in PASS_THROUGH:
            index = index.args[0]
        if index.op == "placeholder" and index.name in graph.user_inputs:
            found[index.name] = int(fx_node.args[0].meta["val"].shape[0])
    return found


__all__ = ["PASS_THROUGH", "token_id_inputs"]

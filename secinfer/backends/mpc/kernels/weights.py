"""The model owner's weights on the `mpc` backend: shared and opened once per model.

A Beaver product W x opens both W - b and x - a. The weights do not change between
queries, so their masks are kept (`protocols.mpc.reuse`): before the data owner's input
exists (the offline phase), each weight that feeds a product is opened once as W - b
(8 bytes per weight per party), and every product with it afterwards, for any number of
queries, opens only the activation. For a BERT-base layer this moves the 7.1 M weights'
openings (57 MB per party) out of every query.

Weights reach products through `aten.linear` (as W^T: the key names the transposed
layout), `aten.embedding` (one-hot ids times the table), and `aten.mm`/`matmul`/`addmm`
with the weight itself as an operand (GPT-2's Conv1D). A weight used otherwise (LayerNorm
scales, biases, convolutions) is shared as before; a weight found by neither rule still
works, its product just opens it per query.
"""

from __future__ import annotations

from typing import Any

from secinfer.backends.mpc.kernels.values import keep_mask, mask_key
from secinfer.core.graph import Graph, op_name

TRANSPOSED = ".T"

_OPERANDS = {
    "aten.linear": ((1, True),),
    "aten.embedding": ((0, False),),
    "aten.matmul": ((0, False), (1, False)),
    "aten.mm": ((0, False), (1, False)),
    "aten.addmm": ((1, False), (2, False)),
}


def weight_operands(graph: Graph) -> dict[str, set[bool]]:
    """Owned floating-point placeholders used directly as a product's operand -> the
    layouts they are used in (True: transposed, as aten.linear uses its weight)."""
    found: dict[str, set[bool]] = {}
    for fx_node in graph.fx_graph.nodes:
        if fx_node.op != "call_function":
            continue
        for index, transposed in _OPERANDS.get(op_name(fx_node.target), ()):
            if index >= len(fx_node.args):
                continue
            arg = fx_node.args[index]
            owned = getattr(arg, "op", None) == "placeholder" and arg.name in graph.owned
            if owned and graph.owned[arg.name].is_floating_point():
                found.setdefault(arg.name, set()).add(transposed)
    return found


def open_weights(graph: Graph, shared: dict[str, Any]) -> int:
    """Mark every product weight among `shared` (name -> secret) and open its mask once
    per layout it is used in, all in one round; returns how many were opened (none twice:
    a mask kept for an earlier graph of the session stays). Both parties call it with the
    same graph, in the same order."""
    from protocols.mpc import reuse

    if not reuse.available():
        return 0
    pending = []
    for name, layouts in weight_operands(graph).items():
        weight = shared.get(name)
        if weight is None:
            continue
        keep_mask(weight, name)
        for transposed in sorted(layouts):
            key = name + TRANSPOSED if transposed else name
            if not reuse.is_kept(key):  # opened already for another graph of the session
                pending.append((transposed_weight(weight), key) if transposed else (weight, key))
    reuse.open_all(pending)
    return len(pending)


def transposed_weight(weight: Any) -> Any:
    """W^T, keeping W's mask key (with the transposed layout's suffix)."""
    out = weight.transpose(0, 1)
    key = mask_key(weight)
    return keep_mask(out, key + TRANSPOSED) if key else out


def secret_product(a: Any, b: Any) -> Any:
    """a @ b for two secrets: reusing a kept weight mask when either carries one."""
    from protocols.mpc import reuse

    key_a, key_b = mask_key(a), mask_key(b)
    if key_a or key_b:
        return reuse.product(a, b, "matmul", x_key=key_a, y_key=key_b)
    return a.matmul(b)


__all__ = ["open_weights", "secret_product", "transposed_weight", "weight_operands"]

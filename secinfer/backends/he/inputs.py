"""How an HE client packs its inputs, and what the server's rotations need.

The server decides per user input (`input_specs`): a float input is encrypted; token ids
that feed an embedding are sent one-hot (encrypted, the default) or embedded by the client
with a table the model owner declared public; other integer inputs (attention masks, token
types) are public. Encrypted inputs use the feature-major `Layout` (`packed_layout`): rows
in slots, features in ciphertexts, with room left for the axes a later view splits off the
features (an image's patches). An image read only by a convolution is sent unfolded into
that convolution's patches (`patches`: spec field "patches", `patches.PatchConv.layout`),
and the server holds it as a `patches.PatchImage` (`server_input`). `rotation_plan` names
the Galois keys the client generates: those of the steps a dry run of the server's own
tensor code rotates by (`protocols.he.dry`), not a formula beside it. `parameter_reason`
says why the CKKS parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from protocols.he.layout import Layout, next_power_of_two
from protocols.he.params import CkksParams
from protocols.he.tensor import HeTensor
from secinfer.backends.he.patches import PatchConv, PatchImage, check_room, image_inputs
from secinfer.core.graph import Graph, op_name
from secinfer.core.plan import Plan
from secinfer.core.token_ids import token_id_inputs
from secinfer.errors import UserError


def input_specs(graph: Graph, public_embedding: bool) -> list[dict[str, Any]]:
    """How the client sends each user input (module docstring): name, mode, vocabulary."""
    tokens = token_id_inputs(graph)
    images = image_inputs(graph)
    placeholders = {n.name: n for n in graph.program.graph.nodes if n.op == "placeholder"}
    specs = []
    for name in graph.user_inputs:
        val = placeholders[name].meta["val"]
        if name in tokens:
            mode = "embedded" if public_embedding else "one_hot"
            specs.append({"name": name, "mode": mode, "vocab": tokens[name]})
        elif name in images:
            specs.append({"name": name, "mode": "encrypted", "patches": images[name].to_dict()})
        elif val.dtype.is_floating_point:
            specs.append({"name": name, "mode": "encrypted"})
        else:
            specs.append({"name": name, "mode": "public"})
    return specs


def public_inputs(graph: Graph) -> set[str]:
    """The user inputs the client sends in the clear (attention masks, token types)."""
    return {s["name"] for s in input_specs(graph, public_embedding=False) if s["mode"] == "public"}


def _inner_room(graph: Graph) -> int:
    """Free slots per row for axes merged later: the largest product of the middle axes of
    a linear layer's input (patches of an image, tokens), rounded up to a power of two."""
    room = 1
    for node in graph.program.graph.nodes:
        if node.op == "call_function" and op_name(node.target) == "aten.linear":
            shape = node.args[0].meta["val"].shape
            if len(shape) >= 3:
                room = max(room, next_power_of_two(math.prod(int(n) for n in shape[1:-1])))
    return room


def packed_layout(graph: Graph, shape: list[int]) -> Layout:
    """Feature-major: every axis but the last in slots (2-D inputs: the batch axis, with
    room for the axes a later view splits off the features)."""
    if len(shape) <= 2:
        return Layout.rows(tuple(shape), 1, inner=_inner_room(graph))
    return Layout.rows(tuple(shape), len(shape) - 1)


def layouts_for(
    graph: Graph, specs: list[dict[str, Any]], embedding_dim: int | None, slots: int
) -> None:
    """Add each encrypted input's layout to its spec; UserError when it needs more slots
    than a ciphertext has."""
    for spec in specs:
        if spec["mode"] == "public":
            continue
        shape = list(spec["shape"])
        if spec.get("patches") is not None:
            conv = PatchConv.from_dict(spec["patches"])
            check_room(spec["name"], tuple(shape), conv, slots)
            spec["layout"] = conv.layout(tuple(shape)).to_dict()
            continue
        if spec["mode"] == "one_hot":
            shape = [*shape, spec["vocab"]]
        elif spec["mode"] == "embedded":
            shape = [*shape, int(embedding_dim or 0)]
        layout = packed_layout(graph, shape)
        if layout.span() > slots:
            rows = math.prod(shape[:-1])
            raise UserError(
                f"input {spec['name']} of shape {tuple(spec['shape'])} needs {layout.span()} "
                f"slots per ciphertext ({rows} rows, padded to powers of two), a ciphertext has "
                f"{slots}: send fewer rows per query"
            )
        spec["layout"] = layout.to_dict()


def server_input(spec: dict[str, Any], tensor: HeTensor) -> Any:
    """The value the server's run starts from for an encrypted input of `spec`: the tensor
    (token ids marked `token_rows`: their one-hot or embedding axis is last, and `embedded`
    when the client embedded them), or the image it holds as patches
    (`patches.PatchImage`)."""
    if spec.get("patches") is not None:
        return PatchImage(tensor, tuple(spec["shape"]), PatchConv.from_dict(spec["patches"]))
    tensor.embedded = spec["mode"] == "embedded"  # type: ignore[attr-defined]
    tensor.token_rows = spec["mode"] in ("one_hot", "embedded")  # type: ignore[attr-defined]
    return tensor


def client_values(spec: dict[str, Any], value: torch.Tensor) -> np.ndarray | None:
    """What the client encrypts for a float input of `spec`: its values, or the image
    unfolded into the patches of its convolution; None for other modes."""
    if spec["mode"] != "encrypted":
        return None
    if spec.get("patches") is not None:
        return PatchConv.from_dict(spec["patches"]).unfold(value.detach())
    return value.detach().double().numpy()


@dataclass(frozen=True)
class RotationPlan:
    """What the server's run rotates by, and the Galois keys that cover it.

    `steps`: every step (reduced to (-S/2, S/2], as SEAL gets it) that the run performs,
    each with the first op that asks for it; `keys`: `galois.keys_for_steps(steps)`, what
    the client makes (possibly empty); `refreshes`: how many the dry run went through, and
    `refreshed_ciphertexts` the ciphertexts they carried; `first_moves`: per encrypted
    input (by position in the specs), the layout its first re-layout moved it to, when its
    first use re-laid it out (a diagonal linear layer)."""

    steps: dict[int, str]
    keys: list[int]
    refreshes: int
    refreshed_ciphertexts: int = 0
    first_moves: dict[int, Layout] = field(default_factory=dict)
    later_moves: list[tuple[dict[str, Any], Layout]] = field(default_factory=list)
    """As `first_moves`, for the tensors `follow` sent (by their specs): a generation's
    token, encrypted directly in the layout its embedding product moves it to."""


class _DrySeeder:
    """The model owner's tensors in float64, the inputs as given (as the server's)."""

    def owned(self, name: str, value: torch.Tensor) -> Any:
        return value.double() if value.is_floating_point() else value

    def user(self, name: str, value: Any) -> Any:
        return value


def rotation_plan(
    graph: Graph,
    plan: Plan,
    specs: list[dict[str, Any]],
    params: CkksParams,
    evaluation: Any = None,
    engine: Any = None,
    reserve: int = 0,
    *,
    policy: str | None = "auto",
    follow: Any = None,
) -> RotationPlan:
    """The rotations of the encrypted run, found by running it: the executor runs `graph`
    with the `he` kernels on stand-in ciphertexts (`protocols.he.dry.DryEngine`) in the
    layouts of `specs` (`layouts_for` first), public inputs as zeros of their shapes; with
    `evaluation` (a `evaluation.HeEvaluation`) the per-example losses and their sum over
    the rows follow on the logits, as `evaluation.serve_evaluation` computes them. The same tensor
    code as the real run, so the same steps (`protocols.he.dry`); refreshes are assumed
    allowed (without them the real run stops with its own depth error). Errors are those
    of the real run (an op without a kernel, a layout it cannot handle), raised here
    before any key is made. `engine`: the `DryEngine` to run on (default: one for
    `params` with `reserve` levels kept for the refresh, `refresh.RefreshPlan.reserve`;
    one holding `keys` checks that they suffice, `protocols.he.tensor.RotationKeyError`
    inside an `execute.ExecutionError` naming the op otherwise). `policy`: the run's packing
    policy (`protocols.he.relayout.POLICIES`; None: refresh is off, no re-layout), so that
    the dry run makes the real run's packing choices and rotates as it does. `follow`
    (result, tensor) continues the run on the same engine, where `tensor(layout)` makes a
    stand-in ciphertext: a generation's steps on the prefill's caches; it returns the
    (spec, tensor) pairs of the inputs it sent, whose first moves `later_moves` lists."""
    from protocols.he.dry import DryEngine, DryRefresher, dry_grid
    from protocols.he.galois import keys_for_steps
    from protocols.he.tensor import HeTensor
    from secinfer.core.execute import Executor

    if engine is None:
        engine = DryEngine(params.slots, params.depth - reserve, 2.0**params.scale_bits)
    refresher = DryRefresher(engine, policy)
    first: dict[int, str] = {}

    def attribute(where: str) -> None:
        for step in engine.steps:
            first.setdefault(step, where)
        engine.steps.clear()

    def tensor(layout: Layout) -> HeTensor:
        return HeTensor(engine, layout, dry_grid(engine, layout), clean=True, refresher=refresher)

    inputs: list[Any] = []
    sent: dict[tuple[int, ...], int] = {}  # the ciphertexts of each encrypted input
    for position, spec in enumerate(specs):
        if spec["mode"] == "public":
            inputs.append(torch.zeros(spec["shape"], dtype=torch.int64))
            continue
        value = tensor(Layout.from_dict(spec["layout"]))
        sent[tuple(map(id, value.grid.flat))] = position
        inputs.append(server_input(spec, value))

    def hook(name: str, call: Any, value: Any) -> None:
        node = graph.node_by_name[name]
        attribute(f"{node.op} (node {node.name})" + (f" at {node.module}" if node.module else ""))

    result = Executor(graph, "he", plan, seeder=_DrySeeder()).run(tuple(inputs), hook=hook)
    logits = result.outputs[0] if result.outputs else None
    if evaluation is not None and isinstance(logits, HeTensor) and logits.dim() == 2:
        from protocols.he.losses import per_example

        logits = logits.feature_major()  # as `evaluation.serve_evaluation`
        names = list(evaluation.settings.losses)
        values = per_example(logits, tensor(logits.layout), names, evaluation.plan)
        for value in values.values():
            (value * np.ones(logits.shape[0])).sum(0).masked()
        attribute("the private evaluation's losses summed over the rows")
    later: dict[tuple[int, ...], dict[str, Any]] = {}
    if follow is not None:
        for spec, value in follow(result, tensor):
            later.setdefault(tuple(map(id, value.grid.flat)), spec)
        attribute("the generation's steps")
    first_moves: dict[int, Layout] = {}
    later_moves: dict[int, tuple[dict[str, Any], Layout]] = {}
    for ids, source, target in refresher.moves:
        position = sent.pop(ids, None)
        if position is not None and source != target:
            first_moves[position] = target
        spec = later.pop(ids, None)
        if spec is not None and source != target:
            later_moves.setdefault(id(spec), (spec, target))
    keys = keys_for_steps(first, params.slots)
    return RotationPlan(
        first, keys, refresher.refreshes, refresher.ciphertexts, first_moves,
        list(later_moves.values()),
    )  # fmt: skip


def plan_inputs(
    graph: Graph,
    plan: Plan,
    specs: list[dict[str, Any]],
    params: CkksParams,
    evaluation: Any = None,
    reserve: int = 0,
    *,
    policy: str | None = "auto",
    follow: Any = None,
) -> RotationPlan:
    """`rotation_plan`, after sending each encrypted input in the layout its first use
    re-lays it out to (`RotationPlan.first_moves`: the client encrypts it there directly,
    one round trip and the feature-major ciphertexts saved), planned again on those
    layouts. Updates `specs`' layouts in place."""
    again = {"reserve": reserve, "policy": policy, "follow": follow}
    rotations = rotation_plan(graph, plan, specs, params, evaluation, **again)
    if not (rotations.first_moves or rotations.later_moves):
        return rotations
    for position, target in rotations.first_moves.items():
        specs[position]["layout"] = target.to_dict()
    for spec, target in rotations.later_moves:
        spec["layout"] = target.to_dict()
    return rotation_plan(graph, plan, specs, params, evaluation, **again)


def estimated_depth(graph: Graph, plan: Plan) -> int:
    """The model's multiplicative depth (`inspection.he_depth`, longest path) on the plan's
    calibrated ranges; the nodes of `secinfer.backends.he.nonlinear` count the levels their
    kernels take (`nonlinear.node_depth`)."""
    from secinfer.backends.he.nonlinear import planned_levels
    from secinfer.core.inspection import he_depth

    ranges = {
        name: tuple(choice.observed or choice.interval)
        for name, choice in plan.choices.items()
        if choice.observed or choice.interval
    }
    return int(he_depth(graph, ranges, planned_levels(graph, plan))["depth"])


def parameter_reason(graph: Graph, plan: Plan, params: CkksParams, refresh: bool) -> str:
    """Why these CKKS parameters: the model's estimated depth against what contexts offer."""
    from protocols.he.params import max_depth

    needed = estimated_depth(graph, plan)
    largest = max_depth(32768, params.scale_bits)
    if needed <= params.depth:
        return f"the model needs about {needed} levels (estimate): one context holds them"
    how = "refresh every" if refresh else "(refresh is off) only"
    return (
        f"the model needs about {needed} levels (estimate); no 128-bit context holds that "
        f"(N=32768 offers {largest} with {params.scale_bits}-bit primes; a product at N=16384 "
        f"costs 8x one at N=8192, measured), so N={params.poly_modulus_degree}, the smallest "
        f"ring that holds a {params.scale_bits}-bit scale, with a {how} {params.depth} levels"
    )


def embedding_table(graph: Graph, spec_name: str) -> torch.Tensor | None:
    for node in graph.program.graph.nodes:
        if node.op == "call_function" and op_name(node.target) == "aten.embedding":
            index = node.args[1]
            while index.op == "call_function" and index.args:
                index = index.args[0]
            if index.name == spec_name:
                return graph.owned[node.args[0].name]
    return None

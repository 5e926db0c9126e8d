"""The he cases in this process: a client's CKKS context, the server's engine on its public copy.

`HeRunner` holds ONE private context (`secinfer.backends.he.server.DEFAULT_PARAMS`, the
parameters a server uses: N = 8192, chain [60, 40, 40, 60], scale 2^40; every Galois key)
and the server's `Engine` on a public copy (no secret key). A case runs as the server
runs a query (`secinfer.backends.he.server`): the inputs' modes and layouts from
`inputs.input_specs` / `layouts_for` (floating inputs encrypted, token ids one-hot and
encrypted, other integers public; an image read by a convolution unfolded into its
patches), the client encrypts them (`Codec`), the server runs
`Executor(graph, "he", plan)` with its weights in float64 and a `MaskingRefresher` whose
transport is the client's side of a refresh in process (decrypt the masked values,
re-encrypt), and the client decrypts the output.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from helpers.he import client_refresh

from protocols.he.codec import Codec
from protocols.he.engine import Engine
from protocols.he.layout import Layout
from protocols.he.params import make_context, public_copy
from protocols.he.refresh import MaskingRefresher, default_mask_bits
from protocols.he.tensor import HeTensor
from secinfer.backends.he.inputs import client_values, input_specs, layouts_for, server_input
from secinfer.backends.he.kernels import check_he_plan
from secinfer.backends.he.server import DEFAULT_PARAMS
from secinfer.core.execute import Executor
from secinfer.core.graph import Graph
from secinfer.core.plan import Plan


class _ServerSeeder:
    """The model owner's tensors in float64, the inputs as the client sent them."""

    def owned(self, name: str, value: torch.Tensor) -> Any:
        return value.double() if value.is_floating_point() else value

    def user(self, name: str, value: Any) -> Any:
        return value


class HeRunner:
    """One client context and one server engine for every he case."""

    def __init__(self) -> None:
        self.params = DEFAULT_PARAMS
        self.private = make_context(self.params)
        self.codec = Codec(self.private)
        self.engine = Engine(public_copy(self.private))
        bits = default_mask_bits(self.params.coeff_mod_bit_sizes[0], self.params.scale_bits)
        self.refresher = MaskingRefresher(self.engine, client_refresh(self.codec), bits)

    def run(self, graph: Graph, plan: Plan, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
        """The server's run of `graph` on the client's encrypted `inputs`; the decrypted
        output (float64)."""
        check_he_plan(graph, plan)
        # the input-layout helpers read the placeholders' shapes through graph.program
        seen = dataclasses.replace(graph, program=SimpleNamespace(graph=graph.fx_graph))
        specs = input_specs(seen, public_embedding=False)
        for spec, value in zip(specs, inputs, strict=True):
            spec["shape"] = list(value.shape)
        layouts_for(seen, specs, None, self.params.slots)
        sent: list[Any] = []
        for spec, value in zip(specs, inputs, strict=True):
            if spec["mode"] == "public":
                sent.append(value)
                continue
            plain = client_values(spec, value)
            if spec["mode"] == "one_hot":
                plain = torch.nn.functional.one_hot(value.long(), spec["vocab"]).double().numpy()
            layout = Layout.from_dict(spec["layout"])
            grid = self.codec.encrypt(plain, layout)
            tensor = HeTensor(self.engine, layout, grid, clean=True, refresher=self.refresher)
            sent.append(server_input(spec, tensor))
        result = Executor(graph, "he", plan, seeder=_ServerSeeder()).run(tuple(sent))
        output = result.outputs[0]
        if isinstance(output, HeTensor):
            return self.codec.decrypt(output.grid, output.layout)
        return np.asarray(torch.as_tensor(output).double())


__all__ = ["HeRunner"]

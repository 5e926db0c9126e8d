"""SecretFlow-SPU's column of the layer benchmark; runs in SPU's own venv (`make spu`).

    .venv-spu/bin/python benchmarks/spu_layer.py IN.npz OUT.npz

IN.npz holds the bench's BertLayer weights (linear weights as (in, out)), its input x
(1, seq, hidden) and `heads` and `eps`; OUT.npz gets the layer's output and seconds. The
layer runs in SPU 0.9.5's simulator: two parties as threads of this process, protocol
SEMI2K, 64-bit ring, 18 fractional bits (PUMA's 2-party setting), every weight and the
input secret. The nonlinear ops are SPU's own approximations for what jax lowers them to:
GELU as `jax.nn.gelu` in its tanh form, softmax as `jax.nn.softmax`, LayerNorm with
`jax.lax.rsqrt`. PUMA's hand-written GELU and softmax live in SPU's examples, not in its
library, and are not reproduced here.

SPU profiles party 0 and logs "Link details: total send bytes B, recv bytes R, send
actions S, recv actions T" (bytes this party sent, and received, apart): the parent
process reads that line from this script's output. Only numpy, jax and spu are imported:
this file must not import secinfer or torch (SPU's venv has neither).
"""

from __future__ import annotations

import sys
import time


def bert_layer(x, w, heads: int, eps: float):  # type: ignore[no-untyped-def]
    """The BertLayer of `benchmarks.inputs.EncoderLayer` in jax.numpy."""
    import jax
    import jax.numpy as jnp

    batch, seq, hidden = x.shape
    d = hidden // heads

    def linear(t, name):  # type: ignore[no-untyped-def]
        return jnp.matmul(t, w[f"{name}.weight"]) + w[f"{name}.bias"]

    def split(t):  # type: ignore[no-untyped-def]
        return t.reshape(batch, seq, heads, d).transpose(0, 2, 1, 3)

    def layer_norm(t, name):  # type: ignore[no-untyped-def]
        mean = jnp.mean(t, axis=-1, keepdims=True)
        centred = t - mean
        variance = jnp.mean(centred * centred, axis=-1, keepdims=True)
        normed = centred * jax.lax.rsqrt(variance + eps)
        return normed * w[f"{name}.weight"] + w[f"{name}.bias"]

    q = split(linear(x, "attention.self.query"))
    k = split(linear(x, "attention.self.key"))
    v = split(linear(x, "attention.self.value"))
    scores = jnp.matmul(q, k.transpose(0, 1, 3, 2)) * (1.0 / d**0.5)
    probs = jax.nn.softmax(scores, axis=-1)
    context = jnp.matmul(probs, v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
    h1 = layer_norm(linear(context, "attention.output.dense") + x, "attention.output.LayerNorm")
    inner = jax.nn.gelu(linear(h1, "intermediate.dense"), approximate=True)
    return layer_norm(linear(inner, "output.dense") + h1, "output.LayerNorm")


def main(argv: list[str]) -> int:
    import numpy as np
    import spu.libspu as libspu
    import spu.utils.simulation as spsim

    data = dict(np.load(argv[1]))
    heads, eps = int(data.pop("heads")), float(data.pop("eps"))
    x = data.pop("x")
    names = sorted(data)
    config = libspu.RuntimeConfig(
        protocol=libspu.ProtocolKind.SEMI2K, field=libspu.FieldType.FM64, fxp_fraction_bits=18
    )
    config.enable_hal_profile = True  # party 0's link totals in the log
    simulator = spsim.Simulator(2, config)

    def run(x, *weights):  # type: ignore[no-untyped-def]
        return bert_layer(x, dict(zip(names, weights, strict=True)), heads, eps)

    began = time.perf_counter()
    out = spsim.sim_jax(simulator, run)(x, *(data[n] for n in names))
    seconds = time.perf_counter() - began
    np.savez(argv[2], y=np.asarray(out, dtype=np.float64), seconds=seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

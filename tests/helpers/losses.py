"""Per-example losses computed by each secure backend's kernels, and the plaintext
references (`approximations.losses`) they are held to.

mpc (`mpc_losses`): one run of the three real CrypTen parties. The data owner shares 64
rows of logits shaped like a trained 10-class classifier's (about +-15, a margin on the
label for most rows, a few misclassified rows, a tie for the maximum) and the one-hot
labels; every loss is revealed per example to the data owner for the test (a real
evaluation reveals only the sums), and sparsemax a second time with its threshold by
bisection instead of the sort network ("sparsemax_bisection").

he (`he_losses`): real TenSEAL (the caller's CKKS context), refreshes through the masking
refresher with an in-process client. 24 rows of the bundled HE-friendly digits model's
logits and 8 wide synthetic rows (spread up to about 15), decrypted per example; also the
same schedule run in float64 on the plaintext logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from approximations import losses
from protocols.mpc.runtime import Role

NAMES = ("ce", "square", "zloss", "gce", "mae", "compsum", "sparsemax", "entmax15")
FENCHEL_YOUNG = ("sparsemax", "entmax15")
"""Their thresholds cost about a minute of ciphertext arithmetic: the he run computes them
on request (the slow suite), the mpc run always."""
MPC_OPTIONS = losses.LossOptions(zloss_a=0.5, zloss_b=2.0, gce_q=0.7, compsum_tau=1.4)
"""The hyper-parameters of the mpc run (the he run takes the defaults)."""
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SecureLosses:
    """What a backend computed: per example, every loss of `NAMES` and "hit" (1 when no
    class beats the label), for `logits` and `labels`, under `options`. `schedule`: the
    same values from the backend's own arithmetic run in float64 on the plaintext logits,
    where the backend has one (he), else None."""

    values: dict[str, np.ndarray]
    logits: torch.Tensor
    labels: torch.Tensor
    options: losses.LossOptions
    ties: np.ndarray  # rows where the label ties for the maximum
    schedule: dict[str, np.ndarray] | None = None


def reference_per_example(
    name: str, logits: torch.Tensor, labels: torch.Tensor, options: losses.LossOptions
) -> np.ndarray:
    """The plaintext loss `name` of each row on its own."""
    fn = losses.reference(name, options)
    return np.array([float(fn(logits[i : i + 1], labels[i : i + 1])) for i in range(len(labels))])


# --- mpc --------------------------------------------------------------------------------------
def mpc_data() -> tuple[np.ndarray, np.ndarray]:
    """64 rows of 10 logits in [-15, 15] on the fixed-point grid (2^-16) and their labels:
    row 0 a clear hit, row 1 a tie for the maximum, a margin on the label elsewhere."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 10, 64)
    logits = rng.normal(size=(64, 10)) * 4.0
    logits[np.arange(64), labels] += rng.uniform(0.0, 12.0, 64)
    logits[0, :] = 0.0
    logits[0, labels[0]] = 3.0  # a clear hit
    other = (labels[1] + 1) % 10
    logits[1, labels[1]] = logits[1, other] = logits[1].max() + 1.0  # a tie for the maximum
    logits = np.clip(logits, -15.0, 15.0)
    return np.round(logits * 2**16) / 2**16, labels


def mpc_parties(role: Role, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any] | None:
    """A party's part (`protocols.mpc.local.run_local`): the data owner shares the logits
    and the one-hot labels, all compute the per-example losses, the data owner learns them."""
    from protocols.mpc import losses as mpc
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.reveal import reveal_to

    crypten = import_crypten()
    mine = role is Role.DATA_OWNER
    onehot = torch.nn.functional.one_hot(torch.as_tensor(labels), 10).double()
    x = torch.as_tensor(logits)
    shared = crypten.cryptensor(x if mine else torch.zeros_like(x), src=int(Role.DATA_OWNER))
    target = crypten.cryptensor(
        onehot if mine else torch.zeros_like(onehot), src=int(Role.DATA_OWNER)
    )
    o = MPC_OPTIONS
    values = mpc.per_example(
        shared, target, list(NAMES), a=o.zloss_a, b=o.zloss_b, q=o.gce_q, tau=o.compsum_tau
    )
    values["sparsemax_bisection"] = mpc.per_example(
        shared, target, ["sparsemax"], a=o.zloss_a, b=o.zloss_b, q=o.gce_q, accuracy=False,
        kernels=mpc.MpcLossKernels(sort_sparsemax=False),
    )["sparsemax"]  # fmt: skip
    out = {name: reveal_to(v, int(Role.DATA_OWNER)) for name, v in values.items()}
    return {k: v.numpy() for k, v in out.items()} if mine else None


def mpc_losses() -> SecureLosses:
    """`mpc_data` through `mpc_parties` (one session of three processes)."""
    from protocols.mpc.local import run_local

    logits, labels = mpc_data()
    result = run_local(mpc_parties, logits, labels, timeout=600.0)
    return SecureLosses(
        values=result[Role.DATA_OWNER].value,
        logits=torch.as_tensor(logits),
        labels=torch.as_tensor(labels),
        options=MPC_OPTIONS,
        ties=np.array([1]),
    )


# --- he ---------------------------------------------------------------------------------------
def digits_he_logits(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled HE-friendly digits model's float64 logits on the first `rows` test
    images, and their labels."""
    from secinfer.zoo.digits import load_split

    _, _, x, y = load_split(0)
    program = torch.export.load(ROOT / "secinfer" / "data" / "digits_he.pt2")
    with torch.no_grad():
        return program.module()(x[:rows]).double(), y[:rows]


def he_loss_plan(logits: torch.Tensor) -> Any:
    """The loss schedule calibrated on `logits` (`HeLossPlan.calibrated`)."""
    from protocols.he.losses import HeLossPlan

    return HeLossPlan.calibrated(logits)


def he_losses(ctx: Any, names: tuple[str, ...]) -> SecureLosses:
    """The digits and wide rows encrypted under `ctx`, their per-example losses `names`
    (and the hits) computed on ciphertexts and decrypted (module docstring)."""
    from helpers.he import client_refresh
    from protocols.he.codec import Codec
    from protocols.he.engine import Engine
    from protocols.he.layout import Layout
    from protocols.he.losses import per_example
    from protocols.he.refresh import MaskingRefresher
    from protocols.he.tensor import HeTensor

    logits, labels = digits_he_logits(24)
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(8, 10, generator=g, dtype=torch.float64) * 2.5  # spread up to ~15
    logits = torch.cat([logits, wide])
    labels = torch.cat([labels, torch.randint(0, 10, (8,), generator=g)])
    onehot = torch.nn.functional.one_hot(labels, 10).double()
    plan = he_loss_plan(torch.cat([logits, logits * 1.2]))
    codec, engine = Codec(ctx), Engine(ctx)

    refresher = MaskingRefresher(engine, client_refresh(codec), 17)
    layout = Layout.rows(tuple(logits.shape), 1, inner=16)

    def encrypt(values: torch.Tensor) -> HeTensor:
        grid = codec.encrypt(values.numpy(), layout)
        return HeTensor(engine, layout, grid, clean=True, refresher=refresher)

    out = per_example(encrypt(logits), encrypt(onehot), list(names), plan)
    simulated = per_example(logits, onehot, list(names), plan)
    return SecureLosses(
        values={k: codec.decrypt(v.grid, v.layout) for k, v in out.items()},
        logits=logits,
        labels=labels,
        options=plan.options,
        ties=np.array([], dtype=np.int64),
        schedule={k: v.numpy() for k, v in simulated.items()},
    )

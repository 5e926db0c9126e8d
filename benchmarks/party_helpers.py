"""Steps every benchmark party program shares, run inside the party processes: sharing an
input that one party owns, opening an output to the data owner (decoded exactly), the
unmetered warm-ups, and the process's peak memory."""

from __future__ import annotations

import resource
from typing import Any

import numpy as np
import torch

from protocols.mpc.reveal import reveal_to
from protocols.mpc.runtime import Role


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def warm_up_kernels() -> None:
    """One-time set-up our kernels cache (polynomial fits), done before anything is timed."""
    from protocols.mpc.inverse import initial_guess

    initial_guess("reciprocal", 2)
    initial_guess("rsqrt", 4)


def warm_up_protocol() -> None:
    """Unmetered small products, a matmul, comparisons and CrypTen's own approximations on
    both parties, so that first-call costs (dealer requests, code paths, allocations) are
    charged to neither implementation."""
    from protocols.mpc.crypten_setup import import_crypten

    crypten = import_crypten()
    a = crypten.cryptensor(torch.rand(4, 8) + 0.5, src=0)
    b = crypten.cryptensor(torch.rand(8, 4), src=1)
    (a.matmul(b) * a[:, :4]).softmax(-1).get_plain_text()
    (a.inv_sqrt() + a.sigmoid() + (a > 1.0)).get_plain_text()


def share(value: np.ndarray, owner: Role, role: Role) -> Any:
    """Shares of `value`, which only `owner` contributes (the other passes zeros of its
    shape: the harness hands both the array, the protocol uses the owner's only)."""
    from protocols.mpc.crypten_setup import import_crypten

    tensor = torch.from_numpy(np.asarray(value, dtype=np.float32))
    if role is not owner:
        tensor = torch.zeros(tensor.shape)
    return import_crypten().cryptensor(tensor, src=int(owner))


def open_output(y: Any) -> dict[str, Any] | None:
    """y opened to the data owner and decoded exactly (`protocols.mpc.reveal.reveal_to`):
    float64 numpy values and the fixed-point scale; None on the model owner. Both parties
    must call it."""
    values = reveal_to(y, int(Role.DATA_OWNER))
    if values is None:
        return None
    return {"values": values.numpy(), "scale": int(y.encoder.scale)}


__all__ = ["open_output", "peak_rss_mb", "share", "warm_up_kernels", "warm_up_protocol"]

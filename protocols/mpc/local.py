"""Run one function on both computing parties, plus the dealer, on this machine.

`run_local(fn, *args)` starts three fresh processes (multiprocessing's "spawn": never
fork, CrypTen's children hang when torch ran in the parent before a fork), joins them over
a loopback tcp:// rendezvous, calls `fn(role, *args)` on the model owner and the data
owner, and returns what each returned with the traffic it measured. Kernel tests and
benchmarks use it; the product's launcher (`secinfer.backends.mpc.local`) starts
`secinfer party` processes instead. Results come back to this parent through
multiprocessing's queue: a local pipe between a process and its own children, not a wire
between parties.

Every child has a deadline: on timeout or on any failure all children are stopped and
`LocalRunError` names the party and its error.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocols.mpc.meter import Meter, Traffic
from protocols.mpc.runtime import PartySettings, Role, run_dealer, start_party, stop_party
from protocols.net import PEER_TIMEOUT, free_port


class LocalRunError(RuntimeError):
    """A party failed or did not finish in time."""


@dataclass
class PartyResult:
    role: Role
    value: Any
    traffic: Traffic
    seconds: float
    views: list[Any] = field(default_factory=list)


def _party_main(
    role: Role,
    settings: PartySettings,
    keep_views: bool,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    results: Any,
) -> None:
    import torch

    torch.set_num_threads(1)  # three processes share the machine's cores
    try:
        if role is Role.DEALER:
            run_dealer(settings)
            results.put((role, "ok", None, None, 0.0, []))
            return
        start_party(role, settings)
        meter = Meter(keep_views=keep_views).install()
        began = time.perf_counter()
        value = fn(role, *args)
        seconds = time.perf_counter() - began
        meter.remove()
        views = [v.numpy().copy() for v in meter.views] if keep_views else []
        stop_party()
        results.put((role, "ok", value, meter.traffic, seconds, views))
    except BaseException as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        results.put((role, "error", text, None, 0.0, []))


def run_local(
    fn: Callable[..., Any],
    *args: Any,
    timeout: float = 300.0,
    peer_timeout: float = PEER_TIMEOUT,
    provider: str = "dealer",
    precision_bits: int = 16,
    keep_views: bool = False,
    identity: str | None = None,
) -> dict[Role, PartyResult]:
    """Run `fn(role, *args)` on both computing parties; return each party's result.

    `fn` must be importable by name (spawned processes import it) and return numpy arrays
    or plain Python values, not torch tensors (their shared memory dies with the child).
    Kept views come back as numpy arrays. `timeout` bounds the whole run, `peer_timeout`
    each wait for a peer. `identity`: a directory holding every role's identity
    (`protocols.tls.local_identities`): the parties talk over mutual TLS instead of gloo.
    """
    settings = PartySettings(
        rendezvous=f"tcp://127.0.0.1:{free_port()}",
        timeout=peer_timeout,
        provider=provider,
        precision_bits=precision_bits,
        identity=identity,
    )
    roles = [Role.MODEL_OWNER, Role.DATA_OWNER]
    if provider == "dealer":
        roles.append(Role.DEALER)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(
            target=_party_main,
            args=(role, settings, keep_views, fn, args, results),
            name=role.label,
            daemon=True,
        )
        for role in roles
    ]
    for process in processes:
        process.start()
    collected: dict[Role, PartyResult] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(collected) < len(roles):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LocalRunError(f"the parties did not finish within {timeout:.0f} s")
            try:
                role, status, value, traffic, seconds, views = results.get(
                    timeout=min(remaining, 1.0)
                )
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise LocalRunError(
                        f"{dead[0].name} exited with code {dead[0].exitcode}"
                    ) from None
                continue
            if status == "error":
                raise LocalRunError(f"{role.label}: {value}")
            collected[role] = PartyResult(role, value, traffic or Traffic(), seconds, views)
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
    return collected


__all__ = ["LocalRunError", "PartyResult", "run_local"]

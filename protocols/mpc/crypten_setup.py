"""The one place that imports CrypTen: the torch 2.13 compatibility shim and the install hint.

CrypTen 0.4.1 (its last release) imports `torch.onnx._internal.registration` at import
time, for its ONNX model converter. That module is gone in torch 2.13, so a bare
`import crypten` fails. The shim registers a stand-in module of that name (holding
`registry = None`) before the import. Only CrypTen's ONNX path (`crypten.nn.from_pytorch`)
would ever read it, and secinfer does not use that path: models come in through
torch.export instead.

Every module of this project that needs CrypTen calls `import_crypten()` (or `communicator()`
for this process's communicator); only the modules that run CrypTen's TTP provider side
themselves (`protocols.mpc.dealer`, `protocols.mpc.reuse`) also import its random
generators and TTP client, after `import_crypten()`. The import contracts (`.importlinter`)
hold every other module to that. This module imports nothing else of the project.

It also closes CrypTen's pickled messages: its communicator's `send_obj`, `recv_obj` and
`broadcast_obj` pickle Python objects onto the wire (and unpickle what a peer sends, with
an allow-list that admits torch storages and modules). secinfer sends JSON and raw tensor
bytes instead (`secinfer.backends.mpc.wire`, `protocols.mpc.dealer`), so after
`import_crypten()` those three methods raise `PickledMessageError`: a code path that would
pickle on any link fails at once on the side that tries, and nothing pickled is ever read
from a peer.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

REGISTRATION_MODULE = "torch.onnx._internal.registration"
INSTALL_HINT = (
    "CrypTen is not installed: run `make setup`, or "
    "`pip install --no-deps crypten==0.4.1 omegaconf onnx pyyaml scipy` "
    "(its own dependency list is broken, so never install it with dependencies)"
)


class CryptenMissingError(ImportError):
    """CrypTen is not installed in this environment."""


class PickledMessageError(RuntimeError):
    """Something asked CrypTen to pickle a message onto the wire, or to unpickle one."""


PICKLING_METHODS = ("send_obj", "recv_obj", "broadcast_obj")


def apply_torch_shim() -> bool:
    """Register the stand-in for `torch.onnx._internal.registration` if torch lacks it.

    Returns True when the stand-in was installed, False when torch still has the module
    (older torch) or the stand-in is already there. Idempotent.
    """
    if REGISTRATION_MODULE in sys.modules:
        return False
    try:
        importlib.import_module(REGISTRATION_MODULE)
        return False
    except ImportError:
        pass
    stand_in = types.ModuleType(REGISTRATION_MODULE)
    stand_in.__doc__ = "secinfer stand-in: CrypTen imports this name; torch 2.13 removed it."
    stand_in.registry = None  # type: ignore[attr-defined]
    sys.modules[REGISTRATION_MODULE] = stand_in
    return True


def import_crypten() -> Any:
    """Import CrypTen with the shim applied; a one-line error with the fix if missing."""
    apply_torch_shim()
    try:
        import crypten
    except ModuleNotFoundError as exc:
        if exc.name == "crypten":
            raise CryptenMissingError(INSTALL_HINT) from None
        raise
    forbid_pickled_messages(crypten)
    return crypten


def communicator() -> Any:
    """This process's CrypTen communicator (`crypten.communicator.get()`, valid after
    `crypten.init()`), CrypTen imported through `import_crypten`."""
    return import_crypten().communicator.get()


def forbid_pickled_messages(crypten: Any) -> None:
    """Make the communicator's pickling methods raise (idempotent)."""
    from crypten.communicator import distributed_communicator

    cls = distributed_communicator.DistributedCommunicator
    for name in PICKLING_METHODS:
        if not getattr(getattr(cls, name), "_secinfer_forbidden", False):
            setattr(cls, name, _forbidden(name))


def select_communicator(
    replacement: type | None = None, ttp_setup: Callable[[Any], None] | None = None
) -> None:
    """Choose CrypTen's communicator for the next `crypten.init()`: `replacement` (such as
    `protocols.mpc.tls_communicator.TlsCommunicator`, configured first) with CrypTen's TTP
    client setting up its generators through `ttp_setup` (both or neither); None: CrypTen's
    own gloo `DistributedCommunicator` and TTP set-up. CrypTen's `communicator.get`,
    `_init`, `uninit` and `is_initialized` read the module's `DistributedCommunicator`
    name, so rebinding it switches every use."""
    if (replacement is None) != (ttp_setup is None):
        raise ValueError("a replacement communicator needs its TTP set-up, and only it")
    crypten = import_crypten()
    from crypten.communicator import distributed_communicator
    from crypten.mpc.provider.ttp_provider import TTPClient

    client = TTPClient._TTPClient__TTPClient  # type: ignore[attr-defined]
    if not hasattr(client, "_secinfer_gloo_setup"):
        client._secinfer_gloo_setup = client._setup_generators
    if replacement is not None:
        crypten.communicator.DistributedCommunicator = replacement
        client._setup_generators = ttp_setup
    else:
        crypten.communicator.DistributedCommunicator = (
            distributed_communicator.DistributedCommunicator
        )
        client._setup_generators = client._secinfer_gloo_setup


def _forbidden(name: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PickledMessageError(
            f"communicator.{name} would pickle a message on the wire; secinfer sends JSON "
            "and raw tensors only"
        )

    refuse._secinfer_forbidden = True  # type: ignore[attr-defined]
    return refuse

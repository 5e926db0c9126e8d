"""The one place that imports CrypTen: the torch 2.13 compatibility shim and the install hint.

CrypTen 0.4.1 (its last release) imports `torch.onnx._internal.registration` at import
time, for its ONNX model converter. That module is gone in torch 2.13, so a bare
`import crypten` fails. The shim registers a stand-in module of that name (holding
`registry = None`) before the import. Only CrypTen's ONNX path (`crypten.nn.from_pytorch`)
would ever read it, and secinfer does not use that path: models come in through
torch.export instead.

Every module of this project that needs CrypTen calls `import_crypten()`; nothing else
imports `crypten` directly.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

REGISTRATION_MODULE = "torch.onnx._internal.registration"
INSTALL_HINT = (
    "CrypTen is not installed: run `make setup`, or "
    "`pip install --no-deps crypten==0.4.1 omegaconf onnx pyyaml scipy` "
    "(its own dependency list is broken, so never install it with dependencies)"
)


class CryptenMissingError(ImportError):
    """CrypTen is not installed in this environment."""


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
    return crypten

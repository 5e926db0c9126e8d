"""Secure kernels on CrypTen. CrypTen is imported only through `crypten_setup`."""

from protocols.mpc.crypten_setup import CryptenMissingError, apply_torch_shim, import_crypten

__all__ = ["CryptenMissingError", "apply_torch_shim", "import_crypten"]

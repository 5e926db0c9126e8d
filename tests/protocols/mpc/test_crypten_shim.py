"""The torch-2.13 shim lets the real CrypTen import and compute.

CrypTen runs in a fresh subprocess here: it keeps global state (crypten.init) and its
communicator must not be set up inside the pytest process that other tests share.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, torch
    from protocols.mpc.crypten_setup import import_crypten, REGISTRATION_MODULE
    import sys
    crypten = import_crypten()
    crypten.init()
    a = torch.tensor([1.5, -2.25, 3.0, 0.125])
    b = torch.tensor([2.0, 4.0, -0.5, 8.0])
    enc = crypten.cryptensor(a) * crypten.cryptensor(b)
    print(json.dumps({
        "shim": type(sys.modules[REGISTRATION_MODULE]).__name__,
        "is_mpc": isinstance(enc, crypten.mpc.MPCTensor),
        "share_dtype": str(enc.share.dtype),
        "product": enc.get_plain_text().tolist(),
        "expected": (a * b).tolist(),
    }))
    """
)


def test_shim_lets_crypten_import_and_multiply_encrypted() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["is_mpc"]
    assert result["share_dtype"] == "torch.int64"  # a secret-shared fixed-point tensor
    for got, want in zip(result["product"], result["expected"], strict=True):
        assert abs(got - want) < 1e-3  # 16 fractional bits


def test_shim_is_idempotent_and_crypten_fails_without_it() -> None:
    script = textwrap.dedent(
        """
        import importlib
        try:
            import crypten  # no shim: must fail on torch 2.13
            print("imported")
        except ModuleNotFoundError as exc:
            print("failed:" + exc.name)
        from protocols.mpc.crypten_setup import apply_torch_shim
        print(apply_torch_shim(), apply_torch_shim())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    lines = done.stdout.split()
    assert lines[0] == "failed:torch.onnx._internal.registration", done.stdout + done.stderr
    assert lines[1:] == ["True", "False"]


def test_crypten_can_no_longer_pickle_onto_the_wire() -> None:
    """send_obj / recv_obj / broadcast_obj pickle (and unpickle a peer's bytes): after
    import_crypten() they raise before touching the network."""
    from protocols.mpc.crypten_setup import PICKLING_METHODS, PickledMessageError, import_crypten

    crypten = import_crypten()
    communicator = crypten.communicator.DistributedCommunicator
    for name in PICKLING_METHODS:
        with pytest.raises(PickledMessageError, match="pickle"):
            getattr(communicator, name)(object(), {"any": "object"}, 0)

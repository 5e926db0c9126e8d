"""Shared test settings."""

from __future__ import annotations

import os

import pytest
import torch

# Tests never reach a model hub; everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from hypothesis import settings  # noqa: E402

# CI runs the same examples every time; local runs explore new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def ctx():
    """A client's private CKKS context for the HE tensor tests: N = 8192, chain
    [60, 40, 40, 60], scale 2^40, relinearisation and Galois keys (files may define their
    own `ctx`)."""
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    context.global_scale = 2.0**40
    context.generate_galois_keys()
    return context

"""Public contexts with the Galois keys of chosen steps only, on real TenSEAL (N = 8192)."""

from __future__ import annotations

import numpy as np
import pytest

ts = pytest.importorskip("tenseal")

from protocols.he import galois  # noqa: E402
from protocols.he.matmul import diagonal_bsgs, pack_rows, unpack_rows  # noqa: E402
from protocols.he.params import CkksParams, make_context  # noqa: E402
from protocols.he.rotation import rotate_ciphertext, vector_from_ciphertexts  # noqa: E402

PARAMS = CkksParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40, 60], scale_bits=40)
SLOTS = 4096
STEPS = [1, 16]  # what diagonal_bsgs needs at d_in = 384


@pytest.fixture(scope="module")
def private() -> ts.Context:
    """The client's context: secret key, relinearisation keys, no Galois keys."""
    return make_context(PARAMS, galois_steps=[])


@pytest.fixture(scope="module")
def limited_bytes(private: ts.Context) -> bytes:
    return galois.public_context_with_steps(private, STEPS)


@pytest.fixture(scope="module")
def public(limited_bytes: bytes) -> ts.Context:
    return ts.context_from(limited_bytes)


def _rotated(private: ts.Context, public: ts.Context, step: int) -> np.ndarray:
    """Encrypt 0 .. S-1 under the public context, rotate there, decrypt with the private one."""
    x = np.arange(SLOTS, dtype=np.float64) / SLOTS
    vec = ts.ckks_vector(public, x.tolist())
    out = vector_from_ciphertexts(public, [rotate_ciphertext(vec.ciphertext()[0], step, public)],
                                  [SLOTS])  # fmt: skip
    return np.asarray(ts.ckks_vector_from(private, out.serialize()).decrypt())


def test_the_spliced_context_is_public_with_relin_and_galois_keys(public: ts.Context) -> None:
    assert public.is_public() and not public.is_private()
    assert public.has_galois_keys() and public.has_relin_keys() and public.has_public_key()
    assert public.global_scale == PARAMS.scale
    vec = ts.ckks_vector(public, [1.0, 2.0])
    with pytest.raises(ValueError, match="secret"):
        vec.decrypt()
    with pytest.raises(ValueError):
        public.secret_key()


def test_it_holds_exactly_the_chosen_keys(public: ts.Context) -> None:
    keys = public.galois_keys().data
    assert keys.size() == len(STEPS)
    for step in STEPS:
        assert keys.has_key(galois.galois_elements(public, [step])[0])
    assert not keys.has_key(galois.galois_elements(public, [2])[0])


@pytest.mark.parametrize("step", [1, 16, 1 - SLOTS, 16 + SLOTS])
def test_rotations_by_the_chosen_steps_are_correct(
    private: ts.Context, public: ts.Context, step: int
) -> None:
    x = np.arange(SLOTS, dtype=np.float64) / SLOTS
    np.testing.assert_allclose(_rotated(private, public, step), np.roll(x, -step), atol=1e-5)


def test_a_sum_of_keyed_steps_is_composed_by_seal(private: ts.Context, public: ts.Context) -> None:
    assert galois.key_switches_with_keys(public, 17) == 2  # NAF 16 + 1, both keyed
    x = np.arange(SLOTS, dtype=np.float64) / SLOTS
    np.testing.assert_allclose(_rotated(private, public, 17), np.roll(x, -17), atol=1e-5)


@pytest.mark.parametrize("step", [2, -1, 15, 4])
def test_a_step_without_keys_is_refused(public: ts.Context, step: int) -> None:
    assert galois.key_switches_with_keys(public, step) is None
    vec = ts.ckks_vector(public, [0.5] * 8)
    with pytest.raises(ValueError, match="Galois key not present"):
        rotate_ciphertext(vec.ciphertext()[0], step, public)
    with pytest.raises(ValueError, match=rf"rotate by \[{step}\]"):
        galois.require_rotation_steps(public, [1, step, 16])
    galois.require_rotation_steps(public, [1, 16, 17, SLOTS])


def test_the_limited_context_is_far_smaller_than_all_keys(
    private: ts.Context, limited_bytes: bytes
) -> None:
    sizes = galois.context_sizes(private, STEPS)
    # measured: 1.86 MB without Galois keys, 35.3 MB with all 24, 3.25 MB with 2 (seeded)
    assert sizes["chosen_steps"] == STEPS
    assert sizes["no_galois_keys"] < len(limited_bytes) < sizes["no_galois_keys"] + 2_000_000
    assert sizes["all_galois_keys"] > 30_000_000
    assert sizes["all_over_chosen"] > 8.0
    assert abs(sizes["chosen_galois_keys"] - len(limited_bytes)) < 10_000  # seeds differ


def test_arguments_are_checked(private: ts.Context, limited_bytes: bytes) -> None:
    public = ts.context_from(limited_bytes)
    with pytest.raises(ValueError, match="PRIVATE"):
        galois.public_context_with_steps(public, [1])
    with pytest.raises(ValueError, match="needs no key"):
        galois.public_context_with_steps(private, [SLOTS])
    bare = ts.context_from(galois.public_context_with_steps(private, []))  # rotates nothing
    assert bare.is_public() and not bare.has_galois_keys()
    with_secret = private.serialize(save_secret_key=True)
    with pytest.raises(ValueError, match="private"):
        galois.splice_galois_keys(with_secret, b"")
    assert galois.normalize_steps([1, 1 + SLOTS, -SLOTS + 16, 3000], SLOTS) == [1, 16, -1096]


def test_bsgs_steps_match_the_split() -> None:
    assert galois.bsgs_rotation_steps(384) == [1, 16]
    assert galois.bsgs_rotation_steps(16) == [1, 4]
    assert galois.bsgs_rotation_steps(1) == []


def test_diagonal_bsgs_runs_on_a_context_with_only_its_steps(private: ts.Context) -> None:
    rng = np.random.default_rng(0)
    x, w = rng.uniform(-1, 1, (3, 24)), rng.normal(0, 0.2, (24, 10))
    server = ts.context_from(
        galois.public_context_with_steps(private, galois.bsgs_rotation_steps(24))
    )
    assert server.galois_keys().data.size() == 2
    inputs = [ts.ckks_vector_from(server, v.serialize()) for v in pack_rows(private, x, 10)]
    outputs = diagonal_bsgs(inputs, w)
    values = [ts.ckks_vector_from(private, v.serialize()).decrypt() for v in outputs]
    np.testing.assert_allclose(unpack_rows(values, 3, 24, 10), x @ w, atol=1e-4)

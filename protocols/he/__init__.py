"""CKKS homomorphic-encryption kernels on TenSEAL (planned in issue 6)."""

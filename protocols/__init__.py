"""Secure kernels: `protocols.mpc` (CrypTen) and `protocols.he` (TenSEAL CKKS)."""

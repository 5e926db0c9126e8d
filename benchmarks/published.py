"""Figures published or measured elsewhere, not by this code: earlier measurements of
CrypTen's built-ins and of PUMA's implementation in SecretFlow-SPU 0.9.5 on a BERT-base
layer (seq 128), a plaintext time for the same layer, and two MiniLM-layer figures given
without a source (unverified). They are printed in a table of their own, each row saying
where it comes from (its `source`, as the README's table shows it), never mixed with or
compared by ratio with this run's measurements."""

from __future__ import annotations

CRYPTEN_COUNT = "probably CrypTen's own comm_bytes, which counts an all-reduce as sent + received"
UNKNOWN_COUNT = "SPU's counter; convention not checked here"
PUBLISHED = (
    {
        "source": "DESIGN.md section 4 (measured on these machines earlier, not in this run)",
        "system": "CrypTen built-ins, 2 parties",
        "layer": "BERT-base layer, seq 128",
        "mb_per_party_as_reported": 746,
        "counting": CRYPTEN_COUNT,
        "rounds": "186 rounds",
        "max_error": None,
        "seconds": 6.7,
    },
    {
        "source": "DESIGN.md section 4 (PUMA's implementation, measured elsewhere)",
        "system": "SecretFlow-SPU 0.9.5 PUMA, 2PC SEMI2K, 64-bit ring",
        "layer": "BERT-base layer, seq 128",
        "mb_per_party_as_reported": 374,
        "counting": UNKNOWN_COUNT,
        "rounds": "289 messages",
        "max_error": 0.0088,
        "seconds": 6.6,
    },
    {
        "source": "DESIGN.md section 4",
        "system": "plaintext",
        "layer": "BERT-base layer, seq 128",
        "mb_per_party_as_reported": None,
        "counting": None,
        "rounds": None,
        "max_error": None,
        "seconds": 0.016,
    },
    {
        "source": "the bench brief (not in DESIGN.md; unverified)",
        "system": "CrypTen built-ins",
        "layer": "MiniLM layer",
        "mb_per_party_as_reported": 492,
        "counting": CRYPTEN_COUNT,
        "rounds": None,
        "max_error": None,
        "seconds": None,
    },
    {
        "source": "the bench brief (not in DESIGN.md; unverified)",
        "system": "SecretFlow-SPU PUMA",
        "layer": "MiniLM layer",
        "mb_per_party_as_reported": 243,
        "counting": UNKNOWN_COUNT,
        "rounds": None,
        "max_error": None,
        "seconds": None,
    },
)

__all__ = ["CRYPTEN_COUNT", "PUBLISHED", "UNKNOWN_COUNT"]

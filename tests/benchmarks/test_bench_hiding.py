"""The hiding bench's table (`benchmarks.he_hiding.markdown`) from rows of the shape `_row`
builds out of a run report; the runs themselves are `make bench`'s (minutes each)."""

from __future__ import annotations

from benchmarks import he_hiding


def _report(bits: float, n: int, flood: int) -> dict:
    hiding = {
        "hiding_bits": bits, "per": "slot" if n == 8192 else "coefficient",
        "mode": "slot" if n == 8192 else "coefficient",
        "value_bound": {"bound": 4096.0, "node": "sum_1"},
    }  # fmt: skip
    return {
        "seconds": 12.5,
        "max_abs_error": 3e-6,
        "he": {
            "params": {"poly_modulus_degree": n, "coeff_mod_bit_sizes": [60, 40, 40, 60]},
            "params_choice": {"candidates": [{"lan": 3.25}]},
            "hiding": hiding,
            "depth": {"depth_per_context": 2, "reserved_levels": 0 if n == 8192 else 2,
                      "refreshes": 7, "refreshed_ciphertexts": 30},
            "bytes": {"server_to_client": 2e6, "client_to_server": 5e6, "public_context": 1e6},
            "flood": {"flood_bits": flood, "slot_error_bound": 1.06e-3} if flood else None,
        },
    }  # fmt: skip


def test_the_table_has_one_line_per_run_and_the_flood_note() -> None:
    rows = [
        he_hiding._row("bert", 1, 0, _report(6.0, 8192, 0)),
        he_hiding._row("bert", 40, 0, _report(45.0, 16384, 0)),
        he_hiding._row("bert", 40, 20, _report(45.0, 16384, 20)),
    ]
    table = he_hiding.markdown({"rows": rows})
    lines = [line for line in table.splitlines() if line.startswith("| bert")]
    assert len(lines) == 3
    assert "today's slot mask" in lines[0] and "6 (slot, B = 4096)" in lines[0]
    assert "45 (coefficient, B = 4096)" in lines[1] and "2 / 2" in lines[1]
    assert "40, flood 2^20" in lines[2] and "12.5 (3.2)" in lines[2]
    assert "at most 0.0011 added" in table
    assert rows[1]["value_bound_node"] == "sum_1"

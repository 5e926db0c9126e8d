"""`make bench`'s SOFT table at its quick size (2 fine-tuning epochs, 2 images): every
variant is trained, saved in the zoo's format, reloaded and run by the secure parties;
under mpc SOFT sends fewer bytes than exp softmax (no row maximum); every he row,
SOFT's included, is measured (the server refused SOFT until its outer sums and landmark
products had packings). The table's renderer on a record with a refused row (no crypto)."""

from __future__ import annotations

import pytest

from benchmarks import soft_attention


@pytest.mark.slow
def test_the_soft_bench_runs_every_variant_on_both_backends() -> None:
    record = soft_attention.run(quick=True)
    rows = {(r["backend"], r["attention"]): r for r in record["rows"]}
    assert set(rows) == {(b, a) for b, (_, names) in soft_attention.FAMILIES.items()
                         for a in names}  # fmt: skip
    for (backend, _), row in rows.items():
        assert 0.0 <= row["accuracy"] <= 1.0
        if backend == "mpc":
            assert row["mb_per_party"] > 0 and row["rounds"] > 0
        else:
            assert "refused" not in row, row
            assert row["refreshes"] > 0 and row["max_abs_error"] < 5e-2
    assert rows[("mpc", "SOFT")]["mb_per_party"] < rows[("mpc", "softmax")]["mb_per_party"]
    assert "| SOFT |" in soft_attention.markdown(record)


def test_the_table_renders_ratios_and_refused_rows() -> None:
    def row(backend: str, attention: str, **figures: float | str) -> dict:
        return {"backend": backend, "attention": attention, "accuracy": 0.9, **figures}

    mpc = {"mb_per_party": 20.0, "rounds": 200, "seconds": 1.0, "max_abs_error": 1e-2}
    he = {"refreshes": 100, "mb_sent": 1000.0, "seconds": 10.0, "max_abs_error": 1e-3}
    record = {"epochs": 2, "images": 2, "rows": [
        row("mpc", "softmax", **mpc), row("mpc", "SOFT", **{**mpc, "mb_per_party": 10.0}),
        row("he", "power-softmax", **he), row("he", "SOFT", refused="server: no packing"),
    ]}  # fmt: skip
    table = soft_attention.markdown(record)
    assert "| SOFT | 0.9000 | 10.00 | 0.50 | 200 | 1.00 | 1.0 | 1.0e-02 |" in table
    assert "| SOFT | 0.9000 | refused: server: no packing |" + "  |" * 6 in table
    he_lines = table.splitlines()[-4:]  # header, rule, two rows: one width
    assert len({line.count("|") for line in he_lines}) == 1, he_lines

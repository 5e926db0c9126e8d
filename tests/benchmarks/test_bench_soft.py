"""`make bench`'s SOFT table at its quick size (2 fine-tuning epochs, 2 images): every
variant is trained, saved in the zoo's format, reloaded and run by the secure parties;
under mpc SOFT sends fewer bytes than exp softmax (no row maximum); every he row is
measured or names why the server refused it."""

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
            assert "refused" in row or row["refreshes"] >= 0
    assert rows[("mpc", "SOFT")]["mb_per_party"] < rows[("mpc", "softmax")]["mb_per_party"]
    assert "| SOFT |" in soft_attention.markdown(record)

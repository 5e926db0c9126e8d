"""`python -m benchmarks --eval-only` refreshes the two evaluation tables of the README and
no other section (it once wrote the MPC evaluation table over the `bench` section when an
earlier mpc.json was present). The tables' producers are replaced by fixed records here:
what is checked is which README section each table lands in."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench, he_loss_costs, loss_costs

README = """intro
<!-- bench:start -->
THE PLAIN TABLES
<!-- bench:end -->
<!-- bench-eval:start -->
old mpc evaluation
<!-- bench-eval:end -->
<!-- bench-eval-he:start -->
old he evaluation
<!-- bench-eval-he:end -->
"""


def test_eval_only_touches_the_evaluation_sections_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module, table in ((loss_costs, "NEW MPC TABLE"), (he_loss_costs, "NEW HE TABLE")):
        monkeypatch.setattr(module, "run", lambda quick=False: {"seconds": 0.0})
        monkeypatch.setattr(module, "markdown", lambda record, table=table: table)
    out = tmp_path / "bench"
    out.mkdir()
    (out / "mpc.json").write_text('{"meta": {"date": "earlier"}}')
    (out / "mpc.md").write_text("STORED MPC TABLE\n")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert bench.main(["--eval-only", "--readme", str(readme), "--mpc-out", str(out)]) == 0
    text = readme.read_text()
    assert "THE PLAIN TABLES" in text and "STORED MPC TABLE" not in text
    assert text.index("NEW MPC TABLE") > text.index("<!-- bench-eval:start -->")
    assert text.index("NEW HE TABLE") > text.index("<!-- bench-eval-he:start -->")
    assert "old mpc evaluation" not in text and "old he evaluation" not in text

"""Smoke test of the HE encoder-layer bench (`benchmarks.he_layer`) in quick mode: a 32-wide
converted BERT layer (4 heads, 8 tokens), one query per setting (the CLI's defaults: auto
at 40-bit hiding; then auto and feature-major with slot masks, `--hiding-bits 1`) through
the CLI's run path (server and client processes, real TenSEAL). Minutes on two cores: slow
suite."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tenseal")

from benchmarks import he_layer


@pytest.mark.slow
def test_both_packings_run_and_match_plaintext() -> None:
    record = he_layer.run(quick=True)
    json.dumps(record)  # what bench/he.json holds
    runs = record["runs"]
    auto, baseline, slot = runs["auto"], runs["feature_major"], runs["slot_masks"]
    for run in (auto, baseline, slot):
        assert run["cosine"] > 0.9999 and run["max_abs_error"] < 1e-3
        assert run["bytes"]["server_to_client"] > 0 and run["round_trips"] > run["refreshes"]
        assert run["compute_seconds"] > 0
    # the defaults: 40 bits of hiding (coefficient-mode refreshes), and still re-layouts
    assert auto["hiding_bits"] >= 40 and slot["hiding_bits"] < 40
    assert baseline["hiding_bits"] == slot["hiding_bits"]
    for packed in (auto, slot):
        assert packed["packing"]["policy"] == "auto" and packed["packing"]["relayouts"] > 0
        assert packed["packing"]["products"]["linear diagonal_bsgs"] == 6
    assert baseline["packing"]["products"] == {"linear feature_major": 6}
    assert baseline["packing"]["relayouts"] == 0
    assert auto["counts"]["rotations"] < baseline["counts"]["rotations"]
    table = he_layer.markdown(record)
    assert "| CLI defaults: cost model per layer (auto), 40-bit hiding |" in table
    assert "Feature-major over auto" in table
    line = he_layer.base_markdown(record)  # the BERT-base line's form, on this record
    assert "NEXUS (NDSS 2025) publishes 857 s" in line and "| operation |" in line


def test_a_baseline_stopped_at_its_cap_is_reported_as_a_lower_bound() -> None:
    record = he_layer.run(quick=True, packings=())  # builds nothing else: the shape only
    auto = {"seconds": 100.0}
    record["runs"] = {"feature_major": {"stopped_after": 800.0, "progress": None}}
    record["speedup_at_least"] = 800.0 / auto["seconds"]
    table = he_layer.markdown(record)
    assert "stopped after 800 s" in table and "no progress line" in table
    assert "more than 8.0x wall" in table and "Server time per operation, feature" not in table

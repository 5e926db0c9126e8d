"""Smoke test of the generation bench (`benchmarks.generation`) in quick mode: a 32-wide
one-block GPT-2 (vocabulary 100), 4 tokens after 8, with the cache and by re-running the
prefix, each through the real mpc parties. Minutes on two cores: slow suite."""

from __future__ import annotations

import json

import pytest

from benchmarks import generation


@pytest.mark.slow
def test_both_ways_pick_the_plaintext_tokens_and_the_cache_costs_less() -> None:
    record = generation.run(quick=True)
    json.dumps(record)  # what bench/generation.json holds
    cached = record["cached"]
    assert cached["tokens"] == record["plaintext_tokens"] == record["no_cache"]["tokens"]
    assert len(cached["steps"]) == len(record["no_cache"]["queries"]) == 4
    assert record["ratio"]["bytes_sent"] > 1.0
    table = generation.markdown(record)
    assert "Tokens equal to plaintext greedy: yes" in table and "PUMA" in table

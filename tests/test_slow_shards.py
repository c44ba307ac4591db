"""The rotating shards of `make test`: every slow test outside the core in exactly one shard, the
shards about equal, and the timing table naming only tests that exist."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import conftest
from conftest import CORE_SLOW, SLOW_SECONDS, slow_shards

HERE = Path(__file__).parent


@pytest.mark.parametrize("n", [1, 6, 12, 40])
def test_every_unit_lands_in_exactly_one_shard(n):
    units = set(SLOW_SECONDS) | {"test_new.py::test_unlisted"}
    shards = slow_shards(units, n)
    assert len(shards) == n
    assert sorted(u for s in shards for u in s) == sorted(units)  # each once, none lost


def test_shards_differ_by_at_most_the_longest_unit():
    # Greedy longest-first: the lightest shard takes each unit, so no shard ends more than one unit
    # above another.
    for n in (6, 12):
        loads = [sum(SLOW_SECONDS.get(u, 60.0) for u in s) for s in slow_shards(SLOW_SECONDS, n)]
        assert max(loads) - min(loads) <= max(SLOW_SECONDS.values())


def test_longest_first_to_the_lightest_shard_by_hand(monkeypatch):
    # 5, 4, 3, 3, 3 s in two shards: a -> 0, b -> 1, c -> 1 (4 < 5), d -> 0 (5 < 7), e -> 1 (7 < 8).
    table = {"a": 5, "b": 4, "c": 3, "d": 3, "e": 3}
    monkeypatch.setattr(conftest, "SLOW_SECONDS", table)
    assert conftest.slow_shards(table, 2) == [{"a", "d"}, {"b", "c", "e"}]


@pytest.mark.parametrize("unit", sorted(set(SLOW_SECONDS) | set(CORE_SLOW)))
def test_the_tables_name_existing_slow_tests(unit):
    """A renamed test would otherwise fall out of the core silently, or count 60 s in the balance."""
    file, _, test = unit.partition("::")
    assert (HERE / file).is_file(), unit
    if test:
        function = getattr(importlib.import_module(file[:-3]), test.split("[")[0], None)
        assert function is not None, f"{unit}: no such test function"
        module_marks = getattr(importlib.import_module(file[:-3]), "pytestmark", [])
        marks = list(getattr(function, "pytestmark", [])) + list(
            module_marks if isinstance(module_marks, list) else [module_marks])
        assert "slow" in {m.name for m in marks}, f"{unit} is not marked slow"

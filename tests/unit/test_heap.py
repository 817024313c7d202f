"""The heap keeper: collections walk only what is young, and cyclic garbage is still taken."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bng_operator.agent.heap import HeapKeeper
from bng_operator.metrics import AgentMetrics


class Node:
    """A tracked object that can be made part of a cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> tuple[Node, weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


@pytest.fixture
def keeper() -> Iterator[tuple[HeapKeeper, list[float], AgentMetrics]]:
    now = [0.0]
    metrics = AgentMetrics()
    k = HeapKeeper(metrics, sweep_every=3600, clock=lambda: now[0])
    k.start()
    yield k, now, metrics
    k.stop()
    assert gc.get_freeze_count() == 0


def test_what_survives_a_freeze_is_skipped_by_later_collections(keeper) -> None:  # type: ignore[no-untyped-def]
    k, _, _ = keeper
    live = [Node() for _ in range(1000)]
    k.freeze()
    frozen = gc.get_freeze_count()
    assert frozen >= 1000
    walked = {id(o) for o in gc.get_objects()}  # what a collection walks
    assert not any(id(n) in walked for n in live)
    k.freeze()
    assert gc.get_freeze_count() >= frozen  # what was frozen stays frozen


def test_young_cyclic_garbage_is_collected_before_the_freeze(keeper) -> None:  # type: ignore[no-untyped-def]
    k, _, _ = keeper
    ref = _cycle()[1]  # garbage as soon as _cycle returns: only the collector can free it
    assert ref() is not None
    k.freeze()
    assert ref() is None


def test_garbage_frozen_alive_is_taken_back_by_the_sweep(keeper) -> None:  # type: ignore[no-untyped-def]
    k, now, _ = keeper
    a, ref = _cycle()
    k.freeze()  # a is alive: frozen
    del a  # now a cycle nobody holds, frozen: the collector does not see it
    gc.collect()
    assert ref() is not None
    now[0] += 3599
    k.freeze()
    assert ref() is not None  # no sweep yet
    now[0] += 1
    k.freeze()  # the hour is up: unfrozen, collected
    assert ref() is None
    assert (k.metrics.registry.get_sample_value("bng_gc_sweep_unreachable_objects") or 0) >= 2


def test_every_collection_is_timed_by_generation(keeper) -> None:  # type: ignore[no-untyped-def]
    k, _, metrics = keeper
    gc.collect(0)
    k.freeze()  # its own full collection too
    count = metrics.registry.get_sample_value
    assert count("bng_gc_pause_seconds_count", {"generation": "0"}) >= 1
    assert count("bng_gc_pause_seconds_count", {"generation": "2"}) >= 1

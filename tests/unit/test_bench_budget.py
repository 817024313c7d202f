"""The DHCP benchmark's CPU budget (bench/dhcp.py): what the machine leaves a server at a
rate, and the floor under bng's slow path that it is compared with."""

from __future__ import annotations

import os

import pytest

from bench.dhcp import Trial, bng_config, slow_path_floor_us
from bng_lab import perfdhcp

pytestmark = pytest.mark.unit

NO_DROPS = perfdhcp.Exchange(1, 1, 0.0, 0.0, 0.0, 0.0, 0.0)


def trial(done: int, server_cpu_s: float, machine_s: float, wall_s: float = 5.0) -> Trial:
    report = perfdhcp.Report(done, NO_DROPS, NO_DROPS, acks_in_period=done * 5)
    return Trial(done, 5, report, cpu_s=server_cpu_s, wall_s=wall_s, machine_s=machine_s)


@pytest.mark.parametrize(("done", "server_cpu_s", "machine_s", "others", "budget"), [
    # Kea at 20,000/s: 0.85 CPU its own, the machine 1.88 busy: the others 1.03
    (20_000, 4.25, 9.4, 1.03, ((os.cpu_count() or 1) - 1.03) * 1e6 / 20_000),
    (1_000, 1.0, 1.0, 0.0, (os.cpu_count() or 1) * 1e6 / 1_000),  # nothing but the server
    (1_000, 2.0, 1.0, 0.0, (os.cpu_count() or 1) * 1e6 / 1_000),  # /proc's ticks: never < 0
])
def test_the_budget_is_the_cpus_the_others_leave_over_the_rate(
        done: int, server_cpu_s: float, machine_s: float, others: float, budget: float) -> None:
    t = trial(done, server_cpu_s, machine_s)
    assert t.others_cores == pytest.approx(others)
    assert t.budget_us == pytest.approx(budget)


def test_the_floor_times_each_step_of_a_new_client() -> None:
    committing = slow_path_floor_us(bng_config(True, None), n=300)
    assert set(committing) == {"parse", "decide", "reply", "bind", "store", "total"}
    assert all(committing[k] > 0 for k in ("parse", "decide", "reply", "bind", "store"))
    assert committing["total"] == pytest.approx(
        sum(v for k, v in committing.items() if k != "total"), abs=0.3)
    # committed at REQUEST, the DISCOVER writes nothing and binds nothing
    plain = slow_path_floor_us(bng_config(False, None), n=300)
    assert plain["store"] == plain["bind"] == 0.0 and plain["decide"] > 0

"""Jiffies as CLOCK_MONOTONIC: the access data path's last-seen (agent/jiffies.py)."""

from __future__ import annotations

import pytest

from bng_operator.agent.jiffies import (
    JiffyClock,
    hz_from_config,
    initial_jiffies,
    pairing_from_timer_list,
    program_clock,
    tick_ns,
    to_monotonic_ns,
)

TIMER_LIST = """Timer List Version: v0.10
HRTIMER_MAX_CLOCK_BASES: 8
now at 225833213683 nsecs

cpu: 0
 clock 0:
  .base:       0000000000000000
jiffies: 4294948685
"""


@pytest.mark.parametrize(("jiffies", "ns"), [
    (4294948685, 225_833_213_683),  # the pairing itself
    (4294948685 + 250, 226_833_213_683),  # a second of ticks later
    (4294948685 - 1, 225_829_213_683),  # a tick (4 ms) before
    (0, 0),  # never
])
def test_jiffies_are_read_on_the_pairing_at_hz(jiffies: int, ns: int) -> None:
    clock = JiffyClock(hz=250, jiffies=4294948685, ns=225_833_213_683)
    assert to_monotonic_ns(jiffies, clock) == ns


def test_jiffies_before_boot_are_not_negative() -> None:
    assert to_monotonic_ns(5, JiffyClock(hz=1000, jiffies=10_000, ns=1e9)) == 0


def test_the_pairing_and_hz_are_read_from_the_kernels_files() -> None:
    assert pairing_from_timer_list(TIMER_LIST) == (225_833_213_683, 4294948685)
    assert pairing_from_timer_list("Timer List Version: v0.10\n") is None
    assert hz_from_config("# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n") == 250
    assert hz_from_config("CONFIG_HZ_PERIODIC=y\n") is None


@pytest.mark.parametrize(("hz", "initial"), [(250, 4294892296), (1000, 4294667296),
                                             (100, 4294937296)])
def test_initial_jiffies_wrap_32_bits_five_minutes_after_boot(hz: int, initial: int) -> None:
    assert initial_jiffies(hz) == initial
    assert (1 << 32) - initial == 300 * hz


@pytest.mark.parametrize(("hz", "tick"), [(100, 10_000_000), (250, 4_000_000),
                                          (300, 3_333_333), (1000, 1_000_000)])
def test_a_tick_is_ticknsec(hz: int, tick: int) -> None:
    assert tick_ns(hz) == tick


@pytest.mark.parametrize(("clock", "jiffies"), [
    (JiffyClock(250, 4294948685, 225_833_213_683), 4294948685),  # the pairing itself
    (JiffyClock(250, 4294948685, 225_833_213_683), 4294948685 + 250 * 3600),  # an hour on
    (JiffyClock(300, 4294877296, 10e9), 4294877296 + 7),  # HZ=300: ticks of 3,333,333 ns
    (JiffyClock(1000, 4294667296 + 10**9, 5e15), 4294667296 + 10**9 - 5),  # 58 days up
])
def test_the_programs_clock_is_the_monotonic_clock_in_u64_arithmetic(
        clock: JiffyClock, jiffies: int) -> None:
    """What a program computes, wrapping at 64 bits as BPF's u64 does (the offset is
    "negative": jiffies start near 2^32), equals CLOCK_MONOTONIC to the ns."""
    tick, offset = program_clock(clock)
    assert 0 <= offset < 1 << 64
    program = (jiffies * tick + offset) % (1 << 64)
    assert program == round(clock.ns) + (jiffies - clock.jiffies) * tick

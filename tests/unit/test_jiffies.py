"""Jiffies as CLOCK_MONOTONIC: the access data path's last-seen (agent/jiffies.py)."""

from __future__ import annotations

import pytest

from bng_operator.agent.jiffies import (
    JiffyClock,
    hz_from_config,
    initial_jiffies,
    pairing_from_timer_list,
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

"""Jiffies (what bpf_jiffies64() reads in the access data path) as CLOCK_MONOTONIC ns.

The access data path stores a session's last packet as jiffies: a load of a kernel variable,
where bpf_ktime_get_coarse_ns() was a helper call on every packet. The agent reports it as
CLOCK_MONOTONIC (``time.monotonic_ns()``), through a pairing of the two clocks read from
``/proc/timer_list`` (``now at <ns> nsecs`` is CLOCK_MONOTONIC, ``jiffies: <n>`` the tick
count a moment later) and the tick rate, CONFIG_HZ.

    >>> to_monotonic_ns(4294948685 + 250, JiffyClock(hz=250, jiffies=4294948685, ns=225e9))
    226000000000
"""

from __future__ import annotations

import gzip
import os
import re
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# include/linux/jiffies.h: jiffies start 5 minutes before wrapping 32 bits, so wrap bugs
# show early. Only for when /proc/timer_list cannot be read.
_INITIAL_JIFFIES_S = 300
_U32 = 1 << 32


@dataclass(frozen=True)
class JiffyClock:
    """Jiffies ``jiffies`` were counted at CLOCK_MONOTONIC ``ns``; ``hz`` a second."""

    hz: int
    jiffies: int
    ns: float


def to_monotonic_ns(jiffies: int, clock: JiffyClock) -> int:
    """``jiffies`` as CLOCK_MONOTONIC ns (to a tick: 4 ms at HZ=250); 0 stays 0 (never)."""
    if jiffies == 0:
        return 0
    return max(0, round(clock.ns + (jiffies - clock.jiffies) * 1e9 / clock.hz))


def hz_from_config(text: str) -> int | None:
    """CONFIG_HZ of a kernel config (/proc/config.gz, /boot/config-*), or None."""
    m = re.search(r"^CONFIG_HZ=(\d+)$", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def pairing_from_timer_list(text: str) -> tuple[int, int] | None:
    """(CLOCK_MONOTONIC ns, jiffies) of /proc/timer_list's head, or None."""
    now = re.search(r"^now at (\d+) nsecs$", text, re.MULTILINE)
    jiffies = re.search(r"^jiffies: (\d+)$", text, re.MULTILINE)
    if now is None or jiffies is None:
        return None
    return int(now.group(1)), int(jiffies.group(1))


def initial_jiffies(hz: int) -> int:
    """INITIAL_JIFFIES on a 64-bit kernel: (unsigned long)(unsigned int)(-300 * HZ)."""
    return -_INITIAL_JIFFIES_S * hz % _U32


def _read(path: Path) -> str | None:
    try:
        if path.suffix == ".gz":
            return gzip.decompress(path.read_bytes()).decode(errors="replace")
        return path.read_text(errors="replace")
    except OSError:
        return None


def _timer_list() -> tuple[int, int] | None:
    text = _read(Path("/proc/timer_list"))  # root only (0400)
    return pairing_from_timer_list(text) if text else None


def _hz(pairing: tuple[int, int] | None) -> int:
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")):
        text = _read(path)
        hz = hz_from_config(text) if text else None
        if hz:
            return hz
    if pairing is not None:  # measured: a few ticks over 0.2 s, rounded to a kernel's HZ
        time.sleep(0.2)
        later = _timer_list()
        if later is not None and later[0] > pairing[0]:
            rate = (later[1] - pairing[1]) * 1e9 / (later[0] - pairing[0])
            return min((100, 250, 300, 1000), key=lambda hz: abs(hz - rate))
    return 250


@cache
def clock() -> JiffyClock:
    """This kernel's pairing, read once: both clocks tick from the same timekeeping, so it
    holds until reboot. Without /proc/timer_list, jiffies counted from INITIAL_JIFFIES at
    boot (off by the time between the two clocks' starts, under a second)."""
    pairing = _timer_list()
    hz = _hz(pairing)
    if pairing is not None:
        return JiffyClock(hz, pairing[1], pairing[0])
    return JiffyClock(hz, initial_jiffies(hz), 0)

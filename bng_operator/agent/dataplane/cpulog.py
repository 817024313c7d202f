"""Per-CPU logs that programs write and the agent reads through mmaps: the fast path's refresh
log (lib/dhcp.h) and the flow log (lib/flow.h).

A log is two BPF arrays: its heads (one per CPU: ``head``, how many entries the CPU wrote,
and ``tail``, how many the agent read) and its entries (``length`` per CPU, from
``cpu * length``). A program writes its CPU's next entry and then moves the head: no helper
call, no lock. The newest entry overwrites the oldest; the agent counts what it did not
read in time as lost, and keeps ``tail`` in the map, so a restarted agent goes on from there.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def possible_cpus(path: Path = Path("/sys/devices/system/cpu/possible")) -> int:
    """How many CPU ids the kernel may use ("0-3", "0,2-5"): the number of per-CPU logs
    (``MAX_CPUS`` in the programs)."""
    last = max(int(part.split("-")[-1]) for part in path.read_text().strip().split(","))
    return last + 1


def mmap_array(table: Any, n: int) -> tuple[mmap.mmap, Any]:
    """An mmapped BPF array of ``n`` elements, as a ctypes array of BCC's Leaf type (reads
    and writes are live)."""
    size = -(-ctypes.sizeof(table.Leaf) * n // mmap.PAGESIZE) * mmap.PAGESIZE
    mm = mmap.mmap(table.get_fd(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    return mm, (table.Leaf * n).from_buffer(mm)


class CpuLog(Generic[T]):
    """One per-CPU log, read by ``drain``; ``row`` turns an entry's bytes, copied out of the
    map before the entry could be trusted, into what the reader wants."""

    def __init__(self, heads: Any, entries: Any, cpus: int, length: int,
                 row: Callable[[bytes], T]) -> None:
        if length & (length - 1):
            raise ValueError(f"a per-CPU log's length is a power of two, not {length}")
        self.length = length
        self._row = row
        self._size = ctypes.sizeof(entries.Leaf)
        self._mm_heads, self.heads = mmap_array(heads, cpus)
        self._mm_entries, self.entries = mmap_array(entries, cpus * length)
        self.lost = 0  # entries overwritten before they were read, since this reader started

    def _copy(self, cpu: int, start: int, end: int) -> bytes:
        """Entries start..end of a CPU's log (at most ``length``): one or two slices of
        the mmap, so that a busy log is copied at memcpy's speed, not an entry at a time."""
        n, size = self.length, self._size
        base = cpu * n * size
        a, b = start & (n - 1), end & (n - 1)
        if a < b or end == start:
            return self._mm_entries[base + a * size:base + b * size]
        return (self._mm_entries[base + a * size:base + n * size] +
                self._mm_entries[base:base + b * size])

    def drain(self) -> list[T]:
        """Every entry not read before, each CPU's in the order written (CPU after CPU)."""
        out: list[T] = []
        n, size = self.length, self._size
        for cpu, log in enumerate(self.heads):
            head, tail = int(log.head), int(log.tail)
            if head == tail:
                continue
            start = max(min(tail, head), head - n)
            raw = self._copy(cpu, start, head)
            # Entries the program overwrote while they were read are not to be trusted: the
            # one at head (being written now) took the slot of head - n.
            first = max(start, int(log.head) - n + 1)
            out.extend(self._row(raw[i:i + size])
                       for i in range((first - start) * size, len(raw), size))
            self.lost += first - min(tail, head)
            log.tail = head
        return out

    def close(self) -> None:
        del self.heads, self.entries  # the ctypes views hold the mmaps' buffers
        self._mm_heads.close()
        self._mm_entries.close()

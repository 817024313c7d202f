"""Where `make setup` caches the binaries it builds (hack/<tool>/build.sh): one lookup for
kube-apiserver/etcd, helm, hubble and prometheus/promtool."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    return Path(os.environ.get("BNG_CACHE", Path.home() / ".cache" / "bng"))


def tool_dir(tool: str, prefix: str) -> Path:
    """``<cache>/<prefix><version>``, the version from hack/<tool>/VERSION."""
    version = (REPO / "hack" / tool / "VERSION").read_text().strip()
    return cache_root() / f"{prefix}{version}"


def built(tool: str, prefix: str, names: tuple[str, ...],
          missing: type[RuntimeError]) -> Path:
    """The directory holding ``names``, as hack/<tool>/build.sh built them; else
    ``missing``, saying how to build them."""
    d = tool_dir(tool, prefix)
    absent = [n for n in names if not os.access(d / n, os.X_OK)]
    if absent:
        raise missing(f"{' and '.join(absent)} not found in {d}. Build "
                      f"{'them' if len(absent) > 1 else 'it'} with `make setup` (or "
                      f"`hack/{tool}/build.sh`); it needs Go and the Go module proxy.")
    return d

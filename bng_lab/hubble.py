"""Cilium's own hubble CLI, as hack/hubble/build.sh builds it: for tests that check the agent's
Hubble API with the client operators use.

    out = hubble("observe", "--server", "127.0.0.1:4245", "-o", "json", "--last", "2")
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from bng_lab.cache import built

REPO = Path(__file__).resolve().parents[1]


class HubbleMissing(RuntimeError):
    """The hubble CLI is not built; `make setup` builds it."""


def hubble_binary() -> Path:
    """The hubble CLI that hack/hubble/build.sh builds into the cache."""
    return built("hubble", "hubble-v", ("hubble",), HubbleMissing) / "hubble"


def hubble(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Runs the hubble CLI with a fresh HOME (so no user config file applies) and returns the
    finished process; the caller checks its returncode."""
    binary = hubble_binary()
    with tempfile.TemporaryDirectory(prefix="bng-hubble-") as home:
        env = {**os.environ, "HOME": home, "XDG_CONFIG_HOME": f"{home}/.config"}
        env = {k: v for k, v in env.items() if not k.startswith("HUBBLE_")}
        return subprocess.run([str(binary), *args], capture_output=True, text=True, env=env,
                              timeout=timeout)

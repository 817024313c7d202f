"""The Helm chart as rendered by the helm that `make setup` builds: for tests that run bng
with exactly what the chart grants (capabilities, ServiceAccounts)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bng_lab.cache import built

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "bng"
NAMESPACE = "bng-system"

Obj = dict[str, Any]


class HelmMissing(RuntimeError):
    """helm is not built; `make setup` builds it."""


def helm_binary() -> Path:
    """The helm that hack/helm/build.sh builds into the cache."""
    return built("helm", "helm-", ("helm",), HelmMissing) / "helm"


def helm(*args: str, home: Path | None = None) -> str:
    """Runs helm with its config and cache under ``home`` (a fresh temporary directory if
    None); returns stdout, or raises with helm's output."""
    binary = helm_binary()
    with tempfile.TemporaryDirectory(prefix="bng-helm-") as tmp:
        base = home or Path(tmp)
        env = {**os.environ, "HELM_CACHE_HOME": str(base / "cache"),
               "HELM_CONFIG_HOME": str(base / "config"), "HELM_DATA_HOME": str(base / "data")}
        r = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env,
                           timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def render(*sets: str, namespace: str = NAMESPACE) -> list[Obj]:
    """The chart's objects with ``--set`` values."""
    args = [a for s in sets for a in ("--set", s)]
    text = helm("template", "bng", str(CHART), "--namespace", namespace, *args)
    return [d for d in yaml.safe_load_all(text) if d]


def agent_capabilities(objs: list[Obj] | None = None) -> list[str]:
    """The capabilities the agent's container adds (it drops all others)."""
    for o in objs if objs is not None else render():
        if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "bng-agent":
            (c,) = o["spec"]["template"]["spec"]["containers"]
            caps = c["securityContext"]["capabilities"]
            if caps.get("drop") != ["ALL"]:
                raise ValueError(f"the agent container does not drop ALL: {caps}")
            return list(caps["add"])
    raise ValueError("the chart renders no bng-agent DaemonSet")


def with_capabilities(caps: list[str]) -> tuple[str, ...]:
    """argv prefix that runs a command as root with only ``caps``, as the container runtime
    does for the chart's securityContext (allowPrivilegeEscalation: false is no_new_privs)."""
    keep = ",".join(f"+{c.lower()}" for c in caps)
    return ("setpriv", "--bounding-set", f"-all,{keep}", "--inh-caps", "-all",
            "--no-new-privs", "--")

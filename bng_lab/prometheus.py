"""promtool and a real Prometheus (built by hack/prometheus/build.sh) for the tests of the
alert rules and dashboards: rule checks, rule unit tests, and a server that scrapes an agent.

    with Prometheus(lab, site.bng, workdir, ["127.0.0.1:9641"], rules=(RULES,)) as prom:
        prom.wait_for("a scrape", lambda: prom.query("up == 1"))
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from bng_lab.cache import built
from bng_lab.netlab import NetLab

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "charts" / "bng" / "rules" / "bng-alerts.yaml"
DASHBOARDS = REPO / "charts" / "bng" / "dashboards"
PORT = 9090


class PrometheusMissing(RuntimeError):
    """prometheus/promtool are not built; `make setup` builds them."""


def binary_dir() -> Path:
    """Where hack/prometheus/build.sh put prometheus and promtool."""
    return built("prometheus", "prometheus-", ("prometheus", "promtool"), PrometheusMissing)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs promtool; the caller checks the result (its output says what failed)."""
    return subprocess.run([str(binary_dir() / "promtool"), *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


class Prometheus:
    """A Prometheus in network namespace ``ns`` (where the agent listens on loopback),
    scraping ``targets`` every second and evaluating ``rules`` every second. Its data and
    config live in ``workdir``; ``close()`` stops it."""

    def __init__(self, lab: NetLab, ns: str, workdir: Path, targets: list[str],
                 rules: tuple[Path, ...] = (), port: int = PORT) -> None:
        self.lab, self.ns, self.workdir, self.port = lab, ns, workdir, port
        workdir.mkdir(parents=True, exist_ok=True)
        self.targets = targets
        self.write_config(rules)
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, rules: tuple[Path, ...]) -> None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "rule_files": [str(r) for r in rules],
            "scrape_configs": [{"job_name": "bng-agent",
                                "static_configs": [{"targets": self.targets}]}],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))

    def reload(self, rules: tuple[Path, ...]) -> None:
        """Load other rule files (SIGHUP: Prometheus re-reads its config and rules)."""
        self.write_config(rules)
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)

    def start(self) -> Prometheus:
        cmd = [str(binary_dir() / "prometheus"),
               f"--config.file={self.workdir / 'prometheus.yml'}",
               f"--storage.tsdb.path={self.workdir / 'data'}",
               f"--web.listen-address=127.0.0.1:{self.port}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = self.lab.popen(self.ns, *cmd, stdout=log, stderr=subprocess.STDOUT)
        self.wait_for("Prometheus ready", lambda: self._get("/-/ready", raw=True) is not None)
        return self

    def _get(self, path: str, raw: bool = False) -> Any:
        r = self.lab.run(self.ns, "curl", "-sf", f"http://127.0.0.1:{self.port}{path}",
                         check=False)
        if r.returncode != 0:
            return None
        return r.stdout if raw else json.loads(r.stdout)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now (raises on a query error)."""
        q = urllib.parse.quote(expr, safe="")
        body = self._get(f"/api/v1/query?query={q}")
        if body is None or body.get("status") != "success":
            raise AssertionError(f"query failed: {expr}: {body}")
        return list(body["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing)."""
        body = self._get("/api/v1/alerts")
        return list(body["data"]["alerts"]) if body else []

    def rule_health(self) -> list[tuple[str, str, str]]:
        """(rule name, health, last error) of every loaded rule."""
        body = self._get("/api/v1/rules") or {"data": {"groups": []}}
        return [(r["name"], r["health"], r.get("lastError", ""))
                for g in body["data"]["groups"] for r in g["rules"]]

    def wait_for(self, what: str, pred: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log()[-3000:]}")
            if pred():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # ip netns exec became prometheus
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

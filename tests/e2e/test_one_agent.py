"""One agent per node (issue 14, point 9): a second agent with the same state directory or
BPF directory is refused at start with a clear error, and so is one whose metrics port is
taken; the first agent serves on, unharmed."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from bng_lab.site import Site


def _second(site: Site, *args: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "bng_operator", "agent", "--node", site.node,
           "--log-format", "text", *args]
    for c in site.config:
        cmd += ["--config", str(c)]
    r = site.lab.run(site.bng, *cmd, check=False, timeout=120)
    return r.returncode, r.stdout + r.stderr


def test_a_second_agent_on_the_node_is_refused(make_site: Callable[..., Site],
                                               tmp_path: Path) -> None:
    site = make_site(subscribers=1)
    site.start_agent()
    other_port = str(site.metrics_port + 1)

    code, out = _second(site, "--state-dir", str(site.state_dir), "--metrics-port", other_port,
                        "--bpf-dir", str(site.lab.bpf_dir))
    assert code == 2, out
    assert "another bng agent is running with the state directory" in out, out
    assert "Traceback" not in out

    code, out = _second(site, "--state-dir", str(tmp_path / "elsewhere"),
                        "--metrics-port", other_port, "--bpf-dir", str(site.lab.bpf_dir))
    assert code == 2 and "another bng agent is running with the BPF directory" in out, out

    code, out = _second(site, "--state-dir", str(tmp_path / "third"), "--no-fast-path",
                        "--metrics-port", str(site.metrics_port))
    assert code == 2 and f"cannot serve metrics on 0.0.0.0:{site.metrics_port}" in out, out
    assert "Traceback" not in out

    site.wait_ready(5)  # the first agent serves on
    assert site.agent is not None and site.agent.poll() is None

"""Run a Python program under cProfile and write its stats when it exits (also by SystemExit,
as the agent does on SIGTERM). For Site.wrap, which puts argv before the agent's own:

    site.wrap = (sys.executable, "-m", "bng_lab.profiled", "/tmp/agent.prof")
    # runs: python -m bng_lab.profiled /tmp/agent.prof python -m bng_operator agent ...

Only the thread that runs the program (the agent's event loop) is profiled.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import runpy
import sys


def summary(path: str, top: int, ours: str) -> tuple[str, pstats.Stats]:
    """The stats written at ``path``: the ``top`` functions by own time, then those matching
    ``ours`` (a regex on file names) by time with callees; as text, and the stats."""
    buf = io.StringIO()
    st = pstats.Stats(path, stream=buf)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(ours, top)
    return buf.getvalue(), st


def main() -> None:
    out, _python, flag, module, *args = sys.argv[1:]
    if flag != "-m":
        raise SystemExit("usage: python -m bng_lab.profiled OUT PYTHON -m MODULE ARGS...")
    sys.argv = [module, *args]
    prof = cProfile.Profile()
    prof.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        prof.disable()
        prof.dump_stats(out)


if __name__ == "__main__":
    main()

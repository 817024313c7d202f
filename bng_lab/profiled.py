"""Run a Python program under cProfile and write its stats when it exits (also by SystemExit,
as the agent does on SIGTERM). For Site.wrap, which puts argv before the agent's own:

    site.wrap = (sys.executable, "-m", "bng_lab.profiled", "/tmp/agent.prof")
    # runs: python -m bng_lab.profiled /tmp/agent.prof python -m bng_operator agent ...

Only the thread that runs the program (the agent's event loop) is profiled.
"""

from __future__ import annotations

import cProfile
import runpy
import sys


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

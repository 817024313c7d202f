"""`bng operator`'s flags that the operator renders into every BNGNode are checked as the
BNGNode's fields are, before anything starts."""

from __future__ import annotations

import pytest

from bng_operator.cli import main

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value", ["-1", "4096", "0-1", "one"])
def test_a_wrong_event_loop_cpu_is_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["operator", "--event-loop-cpu", value])
    assert e.value.code == 2
    assert f"--event-loop-cpu: {value}: want a CPU number, 0 to 4095" in capsys.readouterr().err

"""The block log, the bindings beside it, and ``lookup`` (agent/nat/log.py)."""

from __future__ import annotations

import json
import logging
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bng_operator.agent.nat.blocks import Grant, Layout, expand
from bng_operator.agent.nat.log import BlockLog, Bound, Holder, lookup, records

A = IPv4Address
ALICE = Holder(A("100.64.0.20"), "remote:res-1", "02:00:00:00:00:01", "olt1/1/1", "res-1")
BOB = Holder(A("100.64.0.21"), "remote:res-2", "02:00:00:00:00:02", "olt1/1/2", "res-2")
G = Grant(A("203.0.113.5"), (1024, 2048), 512)


def test_bindings_survive_a_reopen_and_go_with_their_release(tmp_path: Path) -> None:
    f = tmp_path / "nat.sqlite"
    log = BlockLog(f)
    log.write({ALICE.inside: Bound("cgnat", G, ALICE.identity)}, [],
              records("allocated", "cgnat", G, ALICE, "session bound", 100.0), {"cgnat": 3})
    log.close()
    log = BlockLog(f)
    assert log.bindings() == {ALICE.inside: Bound("cgnat", G, ALICE.identity)}
    assert log.pool_slots() == {"cgnat": 3}
    log.write({}, [ALICE.inside], records("released", "cgnat", G, ALICE, "ended", 200.0))
    assert log.bindings() == {}
    log.close()


def test_each_record_is_one_json_line_without_destinations(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    log = BlockLog(tmp_path / "nat.sqlite")
    with caplog.at_level(logging.INFO, "bng.nat.blocks"):
        log.write({}, [], records("allocated", "cgnat", G, ALICE, "session bound", 1e9))
    lines = [json.loads(r.getMessage()) for r in caplog.records]
    assert [(x["event"], x["ports"]) for x in lines] == [
        ("nat-block-allocated", "1024-1535"), ("nat-block-allocated", "2048-2559")]
    assert lines[0] | {"ports": None} == {
        "event": "nat-block-allocated", "time": "2001-09-09T01:46:40.000Z", "pool": "cgnat",
        "public": "203.0.113.5", "ports": None, "inside": "100.64.0.20",
        "subscriber": "remote:res-1", "mac": "02:00:00:00:00:01", "circuitId": "olt1/1/1",
        "remoteId": "res-1", "reason": "session bound"}
    log.close()


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """Alice holds 203.0.113.5:1024-1535 from t=100 to 200, then Bob from 300 (the hold
    between); the second block of Alice's is released at 200 too."""
    f = tmp_path / "nat.sqlite"
    log = BlockLog(f)
    bob = Grant(G.public, (1024,), 512)
    log.write({}, [], records("allocated", "cgnat", G, ALICE, "session bound", 100.0))
    log.write({}, [], records("released", "cgnat", G, ALICE, "session ended", 200.0))
    log.write({}, [], records("allocated", "cgnat", bob, BOB, "session bound", 300.0))
    log.close()
    return f


@pytest.mark.parametrize(("port", "at", "who"), [
    (1024, 99.0, None),  # before any allocation
    (1024, 100.0, "remote:res-1"),
    (1535, 150.0, "remote:res-1"),
    (2048, 199.0, "remote:res-1"),  # its second block
    (1024, 200.0, "remote:res-1"),  # released at that very time: still its own
    (1024, 250.0, None),  # held: nobody's
    (1024, 300.0, "remote:res-2"),
    (1024, 1e12, "remote:res-2"),  # still Bob's
    (2048, 400.0, None),
    (1536, 150.0, None),  # between Alice's two blocks
])
def test_lookup_port_block(history: Path, port: int, at: float, who: str | None) -> None:
    answers = lookup(history, G.public, port, at)
    assert [a.subscriber for a in answers] == ([who] if who else [])
    if who == "remote:res-1":
        a = answers[0]
        assert (a.inside, a.mac, a.circuit_id, a.since, a.until) == (
            ALICE.inside, ALICE.mac, ALICE.circuit_id, 100.0, 200.0)


def test_lookup_deterministic_uses_the_formula_in_effect(tmp_path: Path) -> None:
    f = tmp_path / "nat.sqlite"
    log = BlockLog(f)
    first = Layout(expand(["203.0.113.0/30"]), 1024, 65535, 4096, 1,
                   (IPv4Network("100.64.0.0/26"),))
    second = Layout(first.addresses, 1024, 65535, 2048, 1, first.inside)
    log.write({}, [], [], formulas={"det": json.dumps(first.describe())})
    # what the formula said at each time, as lookup should say it
    g1 = first.formula(A("100.64.0.7"))
    assert g1 is not None
    log.close()
    assert [a.inside for a in lookup(f, g1.public, g1.blocks[0] + 5, 1e12)] == [A("100.64.0.7")]
    log = BlockLog(f)
    log.write({}, [], [], formulas={"det": json.dumps(second.describe())})
    log.close()
    later = lookup(f, g1.public, g1.blocks[0] + 5, 1e12)
    assert [a.inside for a in later] == [second.owner(g1.public, g1.blocks[0] + 5)]
    assert later[0].inside != A("100.64.0.7")  # the new formula's answer, not the old one's
    assert later[0].mode == "deterministic"


def test_the_cli_answers_in_words_and_exits_1_for_nobody(history: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from bng_operator.cli import main

    assert main(["nat", "lookup", "203.0.113.5", "1100", "--at", "1970-01-01T00:02:30Z",
                 "--file", str(history)]) == 0
    out = capsys.readouterr().out
    assert "203.0.113.5:1100 at 1970-01-01T00:02:30Z: 100.64.0.20 (remote:res-1) pool cgnat" in out
    assert "ports 1024-1535, since 1970-01-01T00:01:40Z, until 1970-01-01T00:03:20Z" in out
    assert "circuit-id olt1/1/1" in out
    assert main(["nat", "lookup", "203.0.113.5", "1100", "--at", "1970-01-01T00:04:10Z",
                 "--file", str(history)]) == 1
    assert "nobody had 203.0.113.5:1100" in capsys.readouterr().out
    assert main(["nat", "lookup", "203.0.113.5", "70000", "--file", str(history)]) == 2
    assert main(["nat", "lookup", "203.0.113.5", "1", "--state-dir",
                 str(history.parent / "none")]) == 2

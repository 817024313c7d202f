"""Random sequences of client messages never break the server's invariants."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bng_lab.dhcp_env import CTX, server
from bng_lab.messages import request
from bng_operator.agent.dhcp.codec import MessageType
from bng_operator.agent.dhcp.server import Context

POOLS = {"residential": IPv4Network("100.64.0.0/20"), "business": IPv4Network("198.51.100.0/24")}
KINDS = [MessageType.DISCOVER, MessageType.REQUEST, MessageType.RELEASE, MessageType.DECLINE,
         MessageType.INFORM]

step = st.tuples(
    st.integers(0, 7),  # which client
    st.sampled_from(KINDS),
    st.sampled_from([None, "100.64.0.20", "100.64.0.21", "198.51.100.9", "198.51.100.10",
                     "10.0.0.1", "100.64.0.1"]),  # requested / ciaddr
    st.sampled_from([None, "100.64.0.1", "10.9.9.9"]),  # server id
    st.sampled_from([None, ("res-1", None), ("biz-olt1-1/1/7", None), (None, "res-2"),
                     ("biz-x", "res-3")]),  # option 82 (circuit, remote)
    st.booleans(),  # use ciaddr (renewing) rather than option 50
    st.integers(0, 5000),  # seconds to let pass first
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=60))
def test_state_machine_invariants(steps: list[tuple]) -> None:  # type: ignore[type-arg]
    s, store, clock = server()
    for who, kind, addr, sid, o82, use_ciaddr, wait in steps:
        clock.t += wait
        s.expire()
        circuit, remote = o82 if o82 else (None, None)
        kw: dict[str, object] = {"circuit": circuit, "remote": remote, "server_id": sid}
        if addr and use_ciaddr and kind in (MessageType.REQUEST, MessageType.RELEASE,
                                            MessageType.INFORM):
            kw["ciaddr"] = addr
        elif addr:
            kw["requested"] = addr
        out = s.handle(request(kind, f"02:00:00:00:00:{who:02x}", **kw), CTX)  # type: ignore[arg-type]
        assert (out.reply is None) == (out.drop is not None or out.kind in ("release", "decline"))
        if out.reply is not None and out.kind in ("offer", "ack") and int(out.reply.yiaddr):
            a = out.reply.yiaddr
            assert any(a in net for net in POOLS.values())
            assert a != IPv4Address("100.64.0.1")  # never the gateway
            assert not (IPv4Address("100.64.0.1") <= a <= IPv4Address("100.64.0.15"))  # excluded
        # One address, one holder; the maps agree; the store agrees with the maps.
        assert len(s.by_address) == len(s.by_identity)
        for address, lease in s.by_address.items():
            assert s.by_identity[lease.identity] is lease
            assert store.leases[address].identity == lease.identity
            assert address not in s.pools[lease.pool].blocks[0].free
        offered = [o.address for o in s.offers.values()]
        assert len(offered) == len(set(offered))
        for o in s.offers.values():
            holder = s.by_address.get(o.address)
            assert holder is None or s.offers.get(holder.identity) is o
        assert sum(s.used.values()) == len(s.by_address)
        # acme-hq's reserved address goes to nobody else.
        acme = s.by_address.get(int(IPv4Address("198.51.100.10")))
        assert acme is None or acme.identity == "circuit:biz-olt1-1/1/7"


def test_context_unicast_flag_does_not_change_the_answer() -> None:
    s, _, _ = server()
    a = s.handle(request(MessageType.DISCOVER, remote="res-1"), CTX).reply
    b = s.handle(request(MessageType.DISCOVER, remote="res-1"),
                 Context(CTX.interface, CTX.server_addresses, unicast=True)).reply
    assert a is not None and b is not None and a.yiaddr == b.yiaddr

"""The codec: round trips, every drop reason, and a fuzz test that it never crashes."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bng_lab.messages import relay82, request
from bng_operator.agent.dhcp.codec import (
    MAGIC,
    MIN_LEN,
    Malformed,
    MessageType,
    Opt,
    decode,
    encode,
)

ORDER = [Opt.MESSAGE_TYPE, Opt.REQUESTED_IP, Opt.SERVER_ID, Opt.CLIENT_ID, Opt.PARAM_REQUEST,
         Opt.HOSTNAME, Opt.RELAY_AGENT]


def wire(**kw: object) -> bytes:
    return encode(request(MessageType.DISCOVER, **kw), ORDER)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    msg = request(MessageType.REQUEST, "02:aa:bb:cc:dd:ee", xid=0xDEADBEEF, requested="100.64.0.20",
                  server_id="100.64.0.1", giaddr="198.51.100.1", circuit="olt1/1/1", remote="res-1",
                  client_id=b"\x01\x02\xaa\xbb\xcc\xdd\xee", prl=bytes([1, 3, 6]), broadcast=True)
    back = decode(encode(msg, ORDER))
    assert back == msg
    assert back.circuit_id == "olt1/1/1" and back.remote_id == "res-1"
    assert str(back.requested_ip) == "100.64.0.20" and back.broadcast


def test_replies_are_padded_to_the_bootp_minimum() -> None:
    assert len(wire()) == 300


def _options(payload: bytes, opts: bytes) -> bytes:
    return payload[:MIN_LEN] + opts


BASE = wire()


@pytest.mark.parametrize(("payload", "reason"), [
    (BASE[:200], "truncated"),
    (BASE[:MIN_LEN - 1], "truncated"),
    (BASE + bytes(1400), "oversized"),
    (b"\x02" + BASE[1:], "wrong_op"),
    (BASE[:236] + b"\x00\x00\x00\x00" + BASE[240:], "no_magic_cookie"),
    (_options(BASE, b"\x35\x01\x01\x0c\x20abc"), "option_overrun"),
    (_options(BASE, b"\x35\x01\x01\x3d"), "option_overrun"),
    (_options(BASE, b"\x37\x04\x01\x03\x06\xff"), "no_message_type"),
    (_options(BASE, b"\x35\x01\x63\xff"), "no_message_type"),
    (BASE[:1] + b"\x06" + BASE[2:], "bad_hardware"),
])
def test_malformed_messages_name_their_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as e:
        decode(payload)
    assert e.value.reason == reason


def _overloaded(file_opts: bytes, sname_opts: bytes, overload: int) -> bytes:
    hdr = bytearray(BASE[:MIN_LEN])
    hdr[44:44 + len(sname_opts)] = sname_opts
    hdr[108:108 + len(file_opts)] = file_opts
    return bytes(hdr) + bytes([Opt.OVERLOAD, 1, overload, Opt.MESSAGE_TYPE, 1, 1, 255])


def test_option_overload_reads_file_then_sname() -> None:
    msg = decode(_overloaded(b"\x0c\x04host\xff", b"\x3c\x03abc\xff", 3))
    assert msg.hostname == "host" and msg.vendor_class == "abc"


def test_option_overload_loop_is_dropped() -> None:
    with pytest.raises(Malformed) as e:
        decode(_overloaded(b"\x34\x01\x03\xff", b"", 1))
    assert e.value.reason == "overload_loop"


def test_repeated_options_are_concatenated_rfc3396() -> None:
    msg = decode(_options(BASE, b"\x35\x01\x01\x0c\x02ab\x0c\x02cd\xff"))
    assert msg.hostname == "abcd"


def test_long_option_is_split_on_encode() -> None:
    msg = request(MessageType.DISCOVER, hostname="h" * 300)
    assert decode(encode(msg, ORDER)).hostname == "h" * 300


def test_relay_agent_suboptions_and_raw_echo() -> None:
    raw = relay82("eth 1/1/7:100", "res-42") + b"\x09\x03xyz"
    msg = decode(wire(extra={Opt.RELAY_AGENT: raw}))
    assert msg.relay_agent == raw
    assert msg.circuit_id == "eth 1/1/7:100" and msg.remote_id == "res-42"


@settings(max_examples=3000, deadline=None)
@given(st.binary(min_size=0, max_size=1600))
def test_fuzz_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(Malformed):
        decode(data)


@settings(max_examples=3000, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.integers(0, 3))
def test_fuzz_valid_header_random_options(opts: bytes, overload: int) -> None:
    payload = BASE[:MIN_LEN] + (bytes([52, 1, overload]) if overload else b"") + opts
    try:
        msg = decode(payload)
    except Malformed as e:
        assert e.reason in {"option_overrun", "overload_loop", "bad_overload", "no_message_type"}
        return
    assert msg.type is not None
    assert payload[236:240] == MAGIC
    struct.unpack_from("!I", payload, 4)  # the xid is readable

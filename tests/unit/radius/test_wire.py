"""The requests' encoding and the replies' verification, checked against pyrad (an
independent implementation: it decodes and verifies what we send, and signs what we
verify)."""

from __future__ import annotations

import hmac
import os
from typing import Any

import pytest
from pyrad.dictionary import Dictionary
from pyrad.packet import (
    AccessAccept,
    AccessReject,
    AccessRequest,
    AccountingRequest,
    AccountingResponse,
    AcctPacket,
    AuthPacket,
    Packet,
)

from bng_operator.agent.radius.client import DICTIONARY
from bng_operator.agent.radius.wire import (
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    STATUS_SERVER,
    Encoder,
    hide_password,
    hmac_md5,
    verify_reply,
)

DICT = Dictionary(str(DICTIONARY))
ENC = Encoder(DICT)
SECRET = b"testing123"
LINE = [("NAS-Port-Id", "eth0/1/1:100"), ("Calling-Station-Id", "aa:bb:cc:dd:ee:ff"),
        ("Agent-Circuit-Id", "eth0/1/1:100"), ("Agent-Remote-Id", "remote-1")]
ACCESS: list[tuple[str, list[tuple[str, Any]]]] = [
    ("mac only", [("User-Name", "aa:bb:cc:dd:ee:ff"), ("Service-Type", "Framed-User"),
                  ("NAS-Identifier", "node-1"), ("NAS-IP-Address", "127.0.0.1"),
                  ("NAS-Port-Type", "Ethernet")]),
    ("password and line", [("User-Name", "aabbccddeeff"), ("User-Password", "pw"),
                           ("Service-Type", "Framed-User"), ("NAS-IP-Address", "10.0.0.1"),
                           ("NAS-Port-Type", 15), *LINE]),
    ("non-ascii, longest values", [("User-Name", "é" * 126), ("User-Password", "x" * 128),
                                   ("Agent-Circuit-Id", "c" * 247)]),
]
ACCOUNTING: list[tuple[str, list[tuple[str, Any]]]] = [
    ("start", [("Acct-Status-Type", "Start"), ("Acct-Session-Id", "0123456789abcdef"),
               ("User-Name", "aa:bb:cc:dd:ee:ff"), ("NAS-Identifier", "node-1"),
               ("NAS-IP-Address", "127.0.0.1"), ("NAS-Port-Type", "Ethernet"), *LINE,
               ("Framed-IP-Address", "100.64.0.5"), ("Event-Timestamp", 1_700_000_000),
               ("Class", b"\x00\xffclass"), ("Acct-Delay-Time", 0)]),
    ("stop with counters", [("Acct-Status-Type", "Stop"), ("Acct-Session-Id", "s"),
                            ("Acct-Input-Octets", 0xFFFFFFFF), ("Acct-Input-Gigawords", 3),
                            ("Acct-Terminate-Cause", "Lost-Carrier"),
                            ("Acct-Session-Time", "42")]),
]


def _pyrad_access(attrs: list[tuple[str, Any]], authenticator: bytes) -> bytes:
    pkt = AuthPacket(code=AccessRequest, id=7, secret=SECRET, dict=DICT)
    pkt.authenticator = authenticator
    for name, value in attrs:
        pkt[name] = pkt.PwCrypt(value) if name == "User-Password" else value
    pkt.add_message_authenticator()
    return pkt.RequestPacket()  # type: ignore[no-any-return]


@pytest.mark.parametrize(("name", "attrs"), ACCESS, ids=[c[0] for c in ACCESS])
def test_access_request_is_what_pyrad_encodes_and_verifies(name: str,
                                                          attrs: list[tuple[str, Any]]) -> None:
    authenticator = os.urandom(16)
    raw = ENC.access_request(7, authenticator, SECRET, attrs)
    assert raw == _pyrad_access(attrs, authenticator)
    got = AuthPacket(packet=raw, secret=SECRET, dict=DICT)
    assert got.code == AccessRequest and got.id == 7 and got.authenticator == authenticator
    assert got.verify_message_authenticator()
    for k, v in attrs:
        if k == "User-Password":
            assert got.PwDecrypt(got[k][0]) == v
        elif isinstance(v, str) and k not in ("Service-Type", "NAS-Port-Type"):
            assert got[k] == [v]


@pytest.mark.parametrize(("name", "attrs"), ACCOUNTING, ids=[c[0] for c in ACCOUNTING])
def test_accounting_request_is_what_pyrad_encodes_and_verifies(
        name: str, attrs: list[tuple[str, Any]]) -> None:
    raw, authenticator = ENC.accounting_request(9, SECRET, attrs)
    pkt = AcctPacket(code=AccountingRequest, id=9, secret=SECRET, dict=DICT)
    for k, v in attrs:
        pkt.AddAttribute(k, v)
    assert raw == pkt.RequestPacket()
    got = AcctPacket(packet=raw, secret=SECRET, dict=DICT)
    assert got.VerifyAcctRequest() and got.authenticator == authenticator
    assert got["Acct-Status-Type"] == [attrs[0][1]]


@pytest.mark.parametrize("password", ["", "a", "x" * 15, "x" * 16, "x" * 17, "é" * 64])
def test_hidden_password_is_recovered_by_pyrad(password: str) -> None:
    authenticator = os.urandom(16)
    hidden = hide_password(password.encode(), SECRET, authenticator)
    assert len(hidden) % 16 == 0 and len(hidden) >= 16
    pkt = AuthPacket(secret=SECRET, authenticator=authenticator, dict=DICT)
    assert pkt.PwDecrypt(hidden) == password


@pytest.mark.parametrize(("attrs", "error", "says"), [
    ([("No-Such-Attribute", "x")], ValueError, "no attribute 'No-Such-Attribute'"),
    ([("User-Name", "x" * 254)], ValueError, "at most 253"),
    ([("Agent-Circuit-Id", "x" * 248)], ValueError, "at most 247"),
    ([("User-Password", "x" * 129)], ValueError, "at most 128"),
    ([("Session-Timeout", 1 << 32)], ValueError, "32 bits"),
    ([("Session-Timeout", -1)], ValueError, "32 bits"),
    ([("Service-Type", "No-Such-Value")], TypeError, "No-Such-Value"),
    ([("Session-Timeout", 1.5)], TypeError, "not an integer"),
    ([("User-Name", 5)], TypeError, "str or bytes"),
    ([("NAS-IP-Address", "10.0.0.256")], ValueError, "not an IPv4 address"),
    ([("User-Name", "x" * 253)] * 17, ValueError, "RADIUS allows 4096"),
], ids=["unknown", "long", "long-vsa", "long-password", "big-int", "negative", "bad-value",
        "float", "int-as-string", "bad-address", "too-big"])
def test_what_cannot_be_encoded_says_why(attrs: list[tuple[str, Any]], error: type,
                                         says: str) -> None:
    with pytest.raises(error, match=says):
        ENC.access_request(1, bytes(16), SECRET, attrs)


def test_user_password_only_goes_in_an_access_request() -> None:
    with pytest.raises(ValueError, match="only sent in an Access-Request"):
        ENC.accounting_request(1, SECRET, [("User-Password", "pw")])


# --- replies ------------------------------------------------------------------------------

def _reply(request: Packet, code: int, sign: bool = True, secret: bytes = SECRET,
           **attrs: Any) -> bytes:
    request.secret = secret
    reply = request.CreateReply()
    reply.code = code
    for k, v in attrs.items():
        reply[k.replace("_", "-")] = v
    reply.message_authenticator = sign or None
    return reply.ReplyPacket()  # type: ignore[no-any-return]


def _access() -> tuple[AuthPacket, bytes]:
    authenticator = os.urandom(16)
    raw = ENC.access_request(3, authenticator, SECRET, ACCESS[0][1])
    return AuthPacket(packet=raw, secret=SECRET, dict=DICT), authenticator


def _last_byte_a_type(raw: bytes) -> bytes:
    return raw[:-1] + (b"\x02" if raw[-1] == 1 else b"\x01")


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes((raw[at] ^ 1,)) + raw[at + 1:]


REPLIES: list[tuple[str, Any, bool]] = [
    ("accept", lambda r: _reply(r, AccessAccept, Framed_IP_Address="100.64.0.9"), True),
    ("reject", lambda r: _reply(r, AccessReject), True),
    ("padded past its Length", lambda r: _reply(r, AccessAccept) + b"\x00" * 7, True),
    ("no Message-Authenticator", lambda r: _reply(r, AccessAccept, sign=False), False),
    ("another secret", lambda r: _reply(r, AccessAccept, secret=b"other"), False),
    ("an attribute changed", lambda r: _flip(_reply(r, AccessAccept, Class=b"abcd"), -1), False),
    ("Message-Authenticator changed",
     lambda r: _flip(_reply(r, AccessAccept), 22 + 3), False),
    ("a Proxy-State never sent", lambda r: _reply(r, AccessAccept, Proxy_State=b"x"), False),
    ("shorter than its Length", lambda r: _reply(r, AccessAccept)[:-1], False),
    ("shorter than a header", lambda r: _reply(r, AccessAccept)[:19], False),
    # its last byte made an attribute's type: a byte that is one already (the
    # authenticator's last byte, random: 1 time in 256) is made 2, so the reply always changes
    ("an attribute past the end",
     lambda r: _last_byte_a_type(_reply(r, AccessAccept)), False),
]


@pytest.mark.parametrize(("name", "make", "valid"), REPLIES, ids=[c[0] for c in REPLIES])
def test_a_reply_to_an_access_request_is_verified(name: str, make: Any, valid: bool) -> None:
    request, authenticator = _access()
    raw = make(request)
    got = verify_reply(raw, ACCESS_REQUEST, authenticator, SECRET, True)
    assert (got is not None) == valid
    if got is not None:
        assert got == raw[:int.from_bytes(raw[2:4])]
        assert Packet(packet=got, dict=DICT).code in (AccessAccept, AccessReject)


@pytest.mark.parametrize("sign", [False, True])
def test_an_accounting_response_is_verified_with_or_without_message_authenticator(
        sign: bool) -> None:
    raw, authenticator = ENC.accounting_request(4, SECRET, ACCOUNTING[0][1])
    request = AcctPacket(packet=raw, secret=SECRET, dict=DICT)
    reply = _reply(request, AccountingResponse, sign=sign)
    assert verify_reply(reply, ACCOUNTING_REQUEST, authenticator, SECRET, False) == reply
    assert verify_reply(reply, ACCOUNTING_REQUEST, bytes(16), SECRET, False) is None


@pytest.mark.parametrize("sign", [False, True])
def test_a_status_server_is_signed_and_its_answer_verified_with_or_without_one(
        sign: bool) -> None:
    authenticator = os.urandom(16)
    raw = ENC.access_request(9, authenticator, SECRET, [("NAS-IP-Address", "192.0.2.1")],
                             code=STATUS_SERVER)
    request = AuthPacket(packet=raw, secret=SECRET, dict=DICT)
    assert request.code == STATUS_SERVER and request.verify_message_authenticator(SECRET)
    reply = _reply(request, AccessAccept, sign=sign)
    assert verify_reply(reply, STATUS_SERVER, authenticator, SECRET, False) == reply
    assert verify_reply(reply, STATUS_SERVER, bytes(16), SECRET, False) is None
    assert verify_reply(reply, STATUS_SERVER, authenticator, b"other", False) is None
    if sign:  # a Message-Authenticator, when there, must be right
        assert verify_reply(_flip(reply, 22 + 3), STATUS_SERVER, authenticator, SECRET,
                            False) is None


@pytest.mark.parametrize("secret", [b"", b"s", b"testing123", b"k" * 64, b"k" * 65, os.urandom(200)])
def test_hmac_md5_is_rfc_2104s(secret: bytes) -> None:
    for message in (b"", b"m", os.urandom(300)):
        assert hmac_md5(secret, message) == hmac.digest(secret, message, "md5")

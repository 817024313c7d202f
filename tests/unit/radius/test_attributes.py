"""The pure parts of RADIUS: templates, the Access-Request's attributes, and what an
Access-Accept grants, as tables."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest

from bng_lab.dhcp_env import sample_config
from bng_operator.agent.config import ShapingRates
from bng_operator.agent.radius.attributes import (
    UNSHAPED_BPS,
    Authorisation,
    MissingField,
    RadiusRates,
    Refusal,
    format_mac,
    read_accept,
    render,
    request_attributes,
)
from bng_operator.agent.sessions.session import Grant, Identity
from bng_operator.api.radius import RadiusAuth

MAC = "02:00:5E:10:0a:Bc"


@pytest.mark.parametrize(("fmt", "out"), [
    ("colon-lower", "02:00:5e:10:0a:bc"),
    ("colon-upper", "02:00:5E:10:0A:BC"),
    ("hyphen-lower", "02-00-5e-10-0a-bc"),
    ("hyphen-upper", "02-00-5E-10-0A-BC"),
    ("bare-lower", "02005e100abc"),
    ("bare-upper", "02005E100ABC"),
    ("dotted-lower", "0200.5e10.0abc"),
])
def test_mac_formats(fmt: str, out: str) -> None:
    assert format_mac(MAC, fmt) == out


FULL = Identity(MAC, circuit_id="olt1/0/3:100", remote_id="cust-42")
BARE = Identity(MAC)


@pytest.mark.parametrize(("template", "identity", "out"), [
    ("{mac}", BARE, "02:00:5e:10:0a:bc"),
    ("{circuit-id}", FULL, "olt1/0/3:100"),
    ("{remote-id}@isp.example", FULL, "cust-42@isp.example"),
    ("{circuit-id}|{remote-id}|{mac}", FULL, "olt1/0/3:100|cust-42|02:00:5e:10:0a:bc"),
    ("fixed-password", BARE, "fixed-password"),
])
def test_templates(template: str, identity: Identity, out: str) -> None:
    assert render(template, identity, "colon-lower") == out


@pytest.mark.parametrize("template", ["{circuit-id}", "x-{remote-id}"])
def test_a_template_needing_option_82_without_it_says_so(template: str) -> None:
    with pytest.raises(MissingField, match="option 82"):
        render(template, BARE, "colon-lower")


def _auth(**kw: Any) -> RadiusAuth:
    return RadiusAuth(servers=[{"address": "192.0.2.10", "secret": {"name": "r"}}], **kw)


def test_the_access_request_carries_the_nas_and_option_82() -> None:
    attrs = request_attributes(FULL, _auth(password="{remote-id}", mac_format="hyphen-upper"),
                               "edge-1", "10.0.0.1")
    assert attrs == [
        ("User-Name", "02-00-5E-10-0A-BC"),
        ("User-Password", "cust-42"),
        ("Service-Type", "Framed-User"),
        ("NAS-Identifier", "edge-1"),
        ("NAS-IP-Address", "10.0.0.1"),
        ("NAS-Port-Type", "Ethernet"),
        ("NAS-Port-Id", "olt1/0/3:100"),
        ("Calling-Station-Id", "02-00-5E-10-0A-BC"),
        ("Agent-Circuit-Id", "olt1/0/3:100"),
        ("Agent-Remote-Id", "cust-42"),
    ]


def test_without_option_82_and_password_those_attributes_are_left_out() -> None:
    names = [n for n, _ in request_attributes(BARE, _auth(nas_identifier="bng-a"), "n", "x")]
    assert names == ["User-Name", "Service-Type", "NAS-Identifier", "NAS-IP-Address",
                     "NAS-Port-Type", "Calling-Station-Id"]
    assert ("NAS-Identifier", "bng-a") in request_attributes(BARE, _auth(nas_identifier="bng-a"),
                                                             "n", "x")


CONFIG = sample_config()
RESIDENTIAL = CONFIG.shaping["residential"]
BUSINESS = CONFIG.qos_policies["business-1g"]


def _ip(a: str) -> int:
    return int(IPv4Address(a))


@pytest.mark.parametrize(("attrs", "want"), [
    pytest.param({}, Authorisation(rates=None), id="nothing: the class's defaults"),
    pytest.param({"Framed-IP-Address": ["100.64.9.9"]},
                 Authorisation(grant=Grant(_ip("100.64.9.9"), "residential")),
                 id="a static address in the class's pool"),
    pytest.param({"Framed-IP-Address": ["100.64.0.7"]},
                 Authorisation(grant=Grant(_ip("100.64.0.7"), "residential")),
                 id="a static address in an excluded range"),
    pytest.param({"Framed-IP-Address": ["198.51.100.20"]},
                 Authorisation(grant=Grant(_ip("198.51.100.20"), "business")),
                 id="a static address of another pool: that pool"),
    pytest.param({"Framed-Pool": ["business"]}, Authorisation(grant=Grant(0, "business")),
                 id="another pool"),
    pytest.param({"Framed-Pool": ["residential"]}, Authorisation(),
                 id="the class's own pool: nothing to grant"),
    pytest.param({"Filter-Id": ["business-1g"]}, Authorisation(rates=BUSINESS,
                                                          wanted=RadiusRates("business-1g")),
                 id="Filter-Id names a QoSPolicy"),
    pytest.param({"Filter-Id": ["nope"]},
                 Authorisation(warnings=("Filter-Id nope names no QoSPolicy this node knows; "
                                         "the class's policy applies",),
                               wanted=RadiusRates("nope")),
                 id="Filter-Id naming nothing: warned, the class's policy"),
    pytest.param({"WISPr-Bandwidth-Max-Down": [3_000_000], "WISPr-Bandwidth-Max-Up": [1_000_000]},
                 Authorisation(rates=ShapingRates("radius", 3_000_000, 3750, 1_000_000, 1514,
                                                  "3Mbit", "1Mbit"),
                               wanted=RadiusRates("", 3_000_000, 1_000_000)),
                 id="WISPr rates both ways"),
    pytest.param({"WISPr-Bandwidth-Max-Down": [50_000_000]},
                 Authorisation(rates=ShapingRates(
                     "radius", 50_000_000, 62500, RESIDENTIAL.up_bps, RESIDENTIAL.up_burst,
                     "50Mbit", "20Mbit"), wanted=RadiusRates("", 50_000_000)),
                 id="one WISPr rate: the other from the class's policy"),
    pytest.param({"Filter-Id": ["business-1g"], "WISPr-Bandwidth-Max-Up": [2_500_000]},
                 Authorisation(rates=ShapingRates(
                     "radius", BUSINESS.down_bps, BUSINESS.down_burst, 2_500_000, 3125,
                     "1Gbit", "2500kbit"), wanted=RadiusRates("business-1g", 0, 2_500_000)),
                 id="WISPr over Filter-Id"),
    pytest.param({"Session-Timeout": [3600], "Idle-Timeout": [600],
                  "Acct-Interim-Interval": [300], "Class": [b"gold", b"x"]},
                 Authorisation(session_timeout=3600, idle_timeout=600, interim_interval=300,
                               classes=(b"gold", b"x")),
                 id="timeouts and Class kept"),
    pytest.param({"Reply-Message": ["hi"], "Message-Authenticator": [b"x"],
                  "Framed-IP-Netmask": ["255.255.255.0"], "Service-Type": ["Framed-User"]},
                 Authorisation(ignored=("Framed-IP-Netmask", "Service-Type")),
                 id="attributes not honoured are listed (and counted)"),
])
def test_an_accept_maps_onto_the_session(attrs: dict[str, list[object]],
                                         want: Authorisation) -> None:
    assert read_accept(attrs, CONFIG, "residential", RESIDENTIAL) == want


def test_wispr_rates_on_an_unshaped_class_leave_the_other_way_open() -> None:
    got = read_accept({"WISPr-Bandwidth-Max-Down": [8_000_000]}, CONFIG, "residential", None)
    assert isinstance(got, Authorisation) and got.rates is not None
    assert (got.rates.down_bps, got.rates.up_bps) == (8_000_000, UNSHAPED_BPS)


@pytest.mark.parametrize(("attrs", "reason", "words"), [
    ({"Framed-Pool": ["nope"]}, "unknown_pool", "not an IPPool this node serves"),
    ({"Framed-IP-Address": ["10.9.9.9"]}, "unusable_address", "is not in any pool"),
    ({"Framed-IP-Address": ["100.64.0.1"]}, "unusable_address", "gateway"),
    ({"Framed-IP-Address": ["100.64.15.255"]}, "unusable_address", "broadcast"),
    ({"Framed-IP-Address": ["100.64.9.9"], "Framed-Pool": ["business"]}, "unusable_address",
     "is not in pool business"),
])
def test_an_accept_this_node_cannot_honour_is_refused(attrs: dict[str, list[object]],
                                                      reason: str, words: str) -> None:
    got = read_accept(attrs, CONFIG, "residential", RESIDENTIAL)
    assert isinstance(got, Refusal) and got.reason == reason and words in got.message, got

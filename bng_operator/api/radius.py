"""RADIUS authentication of a SubscriberClass: its servers, the secret they share with the
node (a reference to a Secret, never the secret itself), and how the request is built.

The servers sit on the class (``SubscriberClass.spec.radius``): whether a subscriber is
authenticated is already the class's choice (``auth: radius``), and the operator already
renders each class into the BNGNode of every node that serves its pool, so no other kind,
watch or RBAC rule is needed. Classes that list the same server share its health in the
agent (servers are known by address and port).
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from bng_operator.api.common import Duration, IPv4, Model
from bng_operator.api.rules import Checked, Rule

# A User-Name or password template: text with {mac}, {circuit-id} and {remote-id}.
TEMPLATE_FIELDS = ("mac", "circuit-id", "remote-id")
TEMPLATE_RE = r"^([^{}]|[{](mac|circuit-id|remote-id)[}])*$"  # no backslash: CEL too
Template = Annotated[
    str,
    Field(min_length=1, max_length=128),
    Checked(Rule(f"self.matches('{TEMPLATE_RE}')",
                 "must be text with the fields {mac}, {circuit-id} and {remote-id} only "
                 "(such as {mac} or {circuit-id}@isp.example)",
                 lambda s: re.fullmatch(TEMPLATE_RE, s) is not None)),
]

SECRET_KEY_RE = r"^[-._a-zA-Z0-9]+$"
SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_KEY_RE)]
SecretName = Annotated[
    str,
    Field(min_length=1, max_length=253,
          pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
]

MacFormat = Literal["colon-lower", "colon-upper", "hyphen-lower", "hyphen-upper",
                    "bare-lower", "bare-upper", "dotted-lower"]


class SecretRef(Model):
    """A key of a Secret in the agents' namespace (Kubernetes mode), or the file
    ``<--secrets-dir>/<name>/<key>`` (standalone mode: the layout of a Secret mounted as a
    volume)."""

    name: SecretName
    key: SecretKey = "secret"


class RadiusServer(Model):
    address: IPv4 = Field(description="The server's IPv4 address.")
    auth_port: int = Field(default=1812, ge=1, le=65535)
    acct_port: int = Field(default=1813, ge=1, le=65535,
                           description="Accounting-Requests go to this port.")
    timeout: Duration("1s", "60s") = Field(  # type: ignore[valid-type]
        default="3s", description="How long one try waits for the reply.")
    retries: int = Field(default=2, ge=0, le=10,
                         description="Retransmissions to this server before the next one.")
    secret: SecretRef = Field(description="The shared secret: a Secret's key, never inline.")


class RadiusAuth(Model):
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("self.servers.all(a, self.servers.exists_one(b, a.address == b.address && "
             "a.authPort == b.authPort))",
             "each server (address and authPort) may be listed once",
             lambda r: len({(s.address, s.auth_port) for s in r.servers}) == len(r.servers),
             field_path=".servers"),
    )
    servers: list[RadiusServer] = Field(
        min_length=1, max_length=8,
        description="Tried in order: a server that does not answer (timeout x (retries + 1)) "
                    "hands the request to the next.")
    user_name: Template = Field(default="{mac}", description="User-Name.")
    password: Template | None = Field(
        default=None, description="User-Password (a template, or fixed text). Unset: none sent.")
    mac_format: MacFormat = Field(
        default="colon-lower",
        description="How {mac} and Calling-Station-Id are written: colon-lower "
                    "02:00:5e:10:00:01, hyphen-upper 02-00-5E-10-00-01, bare-lower "
                    "02005e100001, dotted-lower 0200.5e10.0001, ...")
    nas_identifier: str | None = Field(default=None, min_length=1, max_length=64,
                                       description="Default: the node's name.")
    reject_hold_down: Duration("0s", "24h") = Field(  # type: ignore[valid-type]
        default="30s",
        description="After an Access-Reject, the identity is refused without asking again "
                    "for this long.")
    fallback: Literal["refuse", "admit"] = Field(
        default="refuse",
        description="When no server answers: refuse the subscriber, or admit it with the "
                    "class's own pool and policy.")
    dead_after: int = Field(
        default=3, ge=1, le=100,
        description="A server whose requests timed out this many times in a row is marked "
                    "dead, and skipped for deadTime.")
    dead_time: Duration("1s", "1h") = Field(  # type: ignore[valid-type]
        default="60s", description="How long a dead server is skipped.")
    status_server: bool = Field(
        default=False,
        description="Probe a dead server with Status-Server (RFC 5997) every deadTime (at "
                    "most every 10s), and use it again only once it answers; else it is "
                    "tried again by a request after deadTime. The servers must answer "
                    "Status-Server (FreeRADIUS: status_server = yes, its default).")
    interim_interval: Duration("0s", "24h") = Field(  # type: ignore[valid-type]
        default="0s",
        description="Seconds between a session's accounting Interim-Updates when its "
                    "Access-Accept carries no Acct-Interim-Interval; 0s: none.")

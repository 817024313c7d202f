"""The one module that talks netlink (pyroute2): namespaces, links, addresses, XDP attach.

Everything that changes the kernel's network configuration goes through here, so the rest
of bng stays testable without root.

    >>> ns = "bngt-demo"
    >>> create_netns(ns)
    >>> add_veth_pair("a", ns, "b", None)        # a inside ns, b in this namespace
    >>> add_address("a", "192.0.2.1/24", ns); set_up("a", ns)
    >>> attach_xdp("a", prog_fd, ns, mode="native")
    >>> detach_xdp("a", ns); remove_netns(ns)
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any, Literal

from pyroute2 import IPRoute, NetlinkError, NetNS, netns

XDPMode = Literal["native", "generic"]
# include/uapi/linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# IFLA_XDP_ATTACHED as pyroute2 names it (XDP_ATTACHED_DRV, XDP_ATTACHED_SKB)
_ATTACHED_MODES: dict[str, XDPMode] = {"xdp": "native", "xdpgeneric": "generic"}


class InterfaceMissing(LookupError):
    """A named interface does not exist (in the given namespace)."""

    def __init__(self, ifname: str, ns: str | None) -> None:
        where = f" in network namespace {ns}" if ns else ""
        super().__init__(f"interface {ifname!r} not found{where}")
        self.ifname = ifname


@contextlib.contextmanager
def route(ns: str | None = None) -> Iterator[Any]:
    """An rtnetlink socket in ``ns`` (None: this process's namespace)."""
    ipr = NetNS(ns) if ns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


# --- namespaces ----------------------------------------------------------------------------


@contextlib.contextmanager
def in_netns(ns: str | None) -> Iterator[None]:
    """The block with the calling thread in ``ns`` (None: where it is), then back: for
    calls outside netlink that name an interface by ifindex (tcx's bpf())."""
    if ns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        netns.setns(ns, flags=0)
        try:
            yield
        finally:
            netns.setns(own)
    finally:
        os.close(own)


def list_links(ns: str | None = None) -> list[str]:
    """The names of the links in ``ns``."""
    with route(ns) as ipr:
        return [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]


def list_netns() -> list[str]:
    return sorted(netns.listnetns())


def create_netns(name: str, tries: int = 3) -> None:
    """Create a named namespace. pyroute2 makes it in a child process that it gives 2 s to
    answer; on a machine busy enough to miss that, try again (a half-made one removed)."""
    for attempt in range(tries):
        try:
            netns.create(name)
            return
        except TimeoutError:
            remove_netns(name)
            if attempt == tries - 1:
                raise


def remove_netns(name: str) -> None:
    """Remove a named namespace; its veth ends go with it. Missing is fine."""
    with contextlib.suppress(FileNotFoundError, OSError):
        netns.remove(name)


# --- links -----------------------------------------------------------------------------------



def add_veth_pair(name: str, ns: str | None, peer: str, peer_ns: str | None) -> None:
    """Create a veth pair with ``name`` in ``ns`` and ``peer`` in ``peer_ns``."""
    with route(ns) as ipr:
        p: dict[str, Any] = {"ifname": peer}
        if peer_ns != ns:
            # None: the namespace of this process (not /proc/self: pyroute2 may resolve it in
            # a helper process inside ``ns``).
            p["net_ns_fd"] = peer_ns if peer_ns else f"/proc/{os.getpid()}/ns/net"
        ipr.link("add", ifname=name, kind="veth", peer=p)


def set_up(ifname: str, ns: str | None = None) -> None:
    with route(ns) as ipr:
        ipr.link("set", index=_index(ipr, ifname, ns), state="up")


def set_mtu(ifname: str, mtu: int, ns: str | None = None) -> None:
    with route(ns) as ipr:
        ipr.link("set", index=_index(ipr, ifname, ns), mtu=mtu)


def set_mac(ifname: str, mac: str, ns: str | None = None) -> None:
    with route(ns) as ipr:
        ipr.link("set", index=_index(ipr, ifname, ns), address=mac)


def add_address(ifname: str, cidr: str, ns: str | None = None) -> None:
    addr, plen = cidr.split("/")
    with route(ns) as ipr:
        ipr.addr("add", index=_index(ipr, ifname, ns), address=addr, prefixlen=int(plen))



# --- XDP ---------------------------------------------------------------------------------------


def attach_xdp(ifname: str, prog_fd: int, ns: str | None = None, mode: XDPMode = "native",
               replace_fd: int | None = None) -> None:
    """Attach an XDP program. With ``replace_fd`` the swap is atomic and only happens if that
    program is still the attached one; without it, attaching over another program fails."""
    flags = _MODE_FLAGS[mode]
    attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", prog_fd)]
    if replace_fd is None:
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
    else:
        flags |= XDP_FLAGS_REPLACE
        attrs.append(("IFLA_XDP_EXPECTED_FD", replace_fd))
    attrs.append(("IFLA_XDP_FLAGS", flags))
    with route(ns) as ipr:
        try:
            ipr.link("set", index=_index(ipr, ifname, ns), xdp={"attrs": attrs})
        except NetlinkError as e:
            if e.code == errno.EBUSY:
                raise RuntimeError(f"{ifname}: another XDP program is attached") from e
            raise


def detach_xdp(ifname: str, ns: str | None = None, mode: XDPMode = "native") -> None:
    with route(ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if idx:
            ipr.link("set", index=idx[0],
                     xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", _MODE_FLAGS[mode])]})


def xdp_program(ifname: str, ns: str | None = None) -> tuple[int, XDPMode] | None:
    """The id of the XDP program attached to ``ifname`` and its mode, or None."""
    with route(ns) as ipr:
        links = ipr.get_links(_index(ipr, ifname, ns))
    xdp = links[0].get_attr("IFLA_XDP") if links else None
    if xdp is None or not xdp.get_attr("IFLA_XDP_PROG_ID"):
        return None
    mode = _ATTACHED_MODES.get(xdp.get_attr("IFLA_XDP_ATTACHED"), "native")
    return int(xdp.get_attr("IFLA_XDP_PROG_ID")), mode


def xdp_program_id(ifname: str, ns: str | None = None) -> int | None:
    """The id of the XDP program attached to ``ifname``, or None."""
    prog = xdp_program(ifname, ns)
    return prog[0] if prog else None


def _index(ipr: Any, ifname: str, ns: str | None) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise InterfaceMissing(ifname, ns)
    return int(found[0])


def interface_info(ifname: str, ns: str | None = None) -> tuple[int, str, list[str]]:
    """(ifindex, MAC, IPv4 addresses) of ``ifname``."""
    with route(ns) as ipr:
        idx = _index(ipr, ifname, ns)
        link = ipr.get_links(idx)[0]
        addrs = [str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=idx, family=2)]
    return idx, str(link.get_attr("IFLA_ADDRESS")), addrs


def add_bridge(name: str, ns: str | None = None) -> None:
    with route(ns) as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        ipr.link("set", index=_index(ipr, name, ns), state="up")


def rename(ifname: str, new: str, ns: str | None = None) -> None:
    """Give the link another name (taken down for it, as the kernel asks, then up again)."""
    with route(ns) as ipr:
        idx = _index(ipr, ifname, ns)
        ipr.link("set", index=idx, state="down")
        ipr.link("set", index=idx, ifname=new)
        ipr.link("set", index=idx, state="up")


def set_master(ifname: str, bridge: str, ns: str | None = None) -> None:
    with route(ns) as ipr:
        ipr.link("set", index=_index(ipr, ifname, ns), master=_index(ipr, bridge, ns))


# --- ethtool features (an ioctl, not netlink; the calling thread's namespace) --------------

# The NIC takes the VLAN tag off a received frame into the packet's metadata, where XDP does
# not see it.
RX_VLAN_OFFLOAD = "rx-vlan-hw-parse"
# The NIC puts a transmitted frame's tag in itself (veth: the tag stays metadata).
TX_VLAN_OFFLOAD = "tx-vlan-hw-insert"


def feature(ifname: str, name: str) -> bool | None:
    """Whether the ethtool feature ``name`` (as ``ethtool -k`` names it) is on for
    ``ifname``; None when the driver does not have it."""
    from pyroute2.ethtool import Ethtool

    e = Ethtool()
    try:
        f = e.get_features(ifname).features.get(name)
    except OSError as err:
        if err.errno == errno.ENODEV:
            raise InterfaceMissing(ifname, None) from err
        return None
    finally:
        e.close()
    return None if f is None else bool(f.enable)


def set_feature(ifname: str, name: str, on: bool) -> bool:
    """Turn the ethtool feature ``name`` on or off; whether it now is as asked (a driver
    may hold it fixed)."""
    from pyroute2.ethtool import Ethtool

    e = Ethtool()
    try:
        features = e.get_features(ifname)
        f = features.features.get(name)
        if f is None:
            return False
        if bool(f.enable) != on:
            f.enable = on
            with contextlib.suppress(OSError):  # fixed by the driver: said by the result
                e.set_features(ifname, features)
    finally:
        e.close()
    return feature(ifname, name) == on


# --- tc: the access data path's shaping ------------------------------------------------------

TC_ROOT = 0x10000  # handle 1: of the HTB root; a class is 1:<minor>
_GROUP_RATE = "100gbit"  # a group class's: never the limit (its sessions' classes are)
TcDirection = Literal["ingress", "egress"]
_CLSACT_PARENT = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}
_TC_FILTER_HANDLE, _TC_FILTER_PRIO = 1, 1


# An IFB's own transmit queue is 32 packets (the driver's TX_Q_LIMIT), an Ethernet device's
# 1000, and an HTB class's queue is as long as its device's. On the IFB that was 3.9 ms of a
# 100Mbit upload: one TSO burst from the subscriber overflowed it, ~17,000 retransmissions
# in 10 s, 90-92 Mbit/s of goodput where 95.6 is the ideal (tests/e2e/test_qos.py). With
# 1000 the upload is queued as the access interface queues the download.
IFB_QUEUE = 1000


def add_ifb(name: str, ns: str | None = None) -> None:
    """An IFB device ``name``, up, with an Ethernet device's queue length (kept if it
    exists; classes made from now on get that queue)."""
    with route(ns) as ipr:
        if not ipr.link_lookup(ifname=name):
            ipr.link("add", ifname=name, kind="ifb", txqlen=IFB_QUEUE)
        ipr.link("set", index=_index(ipr, name, ns), state="up", txqlen=IFB_QUEUE)


def remove_link(name: str, ns: str | None = None) -> None:
    with route(ns) as ipr:
        for idx in ipr.link_lookup(ifname=name):
            ipr.link("del", index=idx)


def ensure_htb(ifname: str, ns: str | None = None) -> bool:
    """An HTB root (handle 1:) on ``ifname``; traffic in no class goes unshaped (HTB's
    direct queue). Kept if there is one; True when it was made now."""
    with route(ns) as ipr:
        idx = _index(ipr, ifname, ns)
        for q in ipr.get_qdiscs(idx):
            if q["parent"] == 0xFFFFFFFF and q.get_attr("TCA_KIND") == "htb" and \
                    q["handle"] == TC_ROOT:
                return False
        ipr.tc("replace", "htb", idx, TC_ROOT, default=0)  # over the default root qdisc
    return True


# rtnetlink as the kernel has it (linux/netlink.h, linux/rtnetlink.h): what Tc sends itself.
_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port id
_TCMSG = struct.Struct("=B3xiIII")  # tcmsg: family, ifindex, handle, parent, info
_NLA = struct.Struct("=HH")  # nlattr: length, type
_NLMSG_ERROR = 2
_RTM_NEWTCLASS, _RTM_DELTCLASS = 40, 41
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_REPLACE, _NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
_NLM_F_CAPPED, _NLM_F_ACK_TLVS = 0x100, 0x200  # on an ack: no request copy; attributes
_SOL_NETLINK, _NETLINK_CAP_ACK, _NETLINK_EXT_ACK = 270, 10, 11
_NLMSGERR_ATTR_MSG = 1


def _rtnl_socket(ns: str | None) -> socket.socket:
    """A raw rtnetlink socket in ``ns`` (None: the calling thread's namespace). Its acks
    carry the kernel's error message, not a copy of the request."""
    if ns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    else:  # a socket stays in the namespace it was made in: make it there, come back
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            netns.setns(ns, flags=0)
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            finally:
                netns.setns(own)
        finally:
            os.close(own)
    sock.bind((0, 0))
    for opt in (_NETLINK_CAP_ACK, _NETLINK_EXT_ACK):
        with contextlib.suppress(OSError):  # older kernels: errors without their message
            sock.setsockopt(_SOL_NETLINK, opt, 1)
    return sock


def _ack_error(payload: bytes, flags: int) -> NetlinkError | None:
    """The error an NLMSG_ERROR payload reports, with the kernel's message when it gave
    one, or None for an ack."""
    code = -struct.unpack_from("=i", payload)[0]
    if not code:
        return None
    message = None
    if flags & _NLM_F_ACK_TLVS:  # after the request's header, or the whole request
        offset = 4 + (_NLMSG.size if flags & _NLM_F_CAPPED else
                      _NLMSG.unpack_from(payload, 4)[0])
        while offset + _NLA.size <= len(payload):
            length, kind = _NLA.unpack_from(payload, offset)
            if length < _NLA.size:
                break
            if kind & 0x3FFF == _NLMSGERR_ATTR_MSG:
                text = payload[offset + _NLA.size:offset + length].split(b"\0")[0]
                message = f"{os.strerror(code)}: {text.decode(errors='replace')}"
            offset += (length + 3) & ~3
    return NetlinkError(code, message)


def _htb_class_attributes(rate_bps: int, burst_bytes: int) -> bytes:
    """TCA_KIND and TCA_OPTIONS of an HTB class, rate tables included, as pyroute2's
    ``tc("replace-class", "htb", ...)`` encodes them (byte for byte)."""
    from pyroute2.netlink.rtnl.tcmsg import sched_htb, tcmsg

    options = sched_htb.get_class_parameters({"rate": f"{rate_bps}bit", "ceil": f"{rate_bps}bit",
                                              "burst": burst_bytes, "cburst": burst_bytes})
    msg = tcmsg()
    msg["attrs"] = [["TCA_KIND", "htb"], ["TCA_OPTIONS", options]]
    msg.encode()
    return bytes(msg.data[_NLMSG.size + _TCMSG.size:])


class Tc:
    """One rtnetlink socket for many class changes: a class costs one request and its
    ack, not a socket and a dump of every link. pyroute2 encodes each distinct class's
    attributes once; a request is then packed and sent here (pyroute2's generic request
    path cost ~2 ms of CPU a class). Each request waits for its ack: an error is raised,
    as pyroute2 raises it. For one thread; ``close`` when done."""

    def __init__(self, ns: str | None = None) -> None:
        self._ns = ns
        self._ipr = NetNS(ns) if ns else IPRoute()  # link lookups
        self._sock = _rtnl_socket(ns)
        self._seq = 0
        self._indexes: dict[str, int] = {}
        self._attributes: dict[tuple[int, int], bytes] = {}

    def _index(self, ifname: str) -> int:
        if ifname not in self._indexes:
            self._indexes[ifname] = _index(self._ipr, ifname, self._ns)
        return self._indexes[ifname]

    def _on(self, ifname: str, send: Callable[[int], object]) -> None:
        """``send(ifindex)`` for ``ifname``; once more, its index looked up again, if it was
        made again since (ENODEV)."""
        try:
            send(self._index(ifname))
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
            self._indexes.pop(ifname, None)
            send(self._index(ifname))

    def _tc(self, command: str, ifname: str, handle: int, parent: int, **kw: Any) -> None:
        """Through pyroute2: the rare requests (a group's qdisc and class)."""
        self._on(ifname, lambda index: self._ipr.tc(command, "htb", index, handle,
                                                    parent=parent, **kw))

    def _request(self, mtype: int, flags: int, index: int, handle: int, parent: int,
                 attributes: bytes) -> None:
        self._seq = self._seq % 0xFFFFFFFF + 1
        seq = self._seq
        body = _TCMSG.pack(socket.AF_UNSPEC, index, handle, parent, 0) + attributes
        self._sock.send(_NLMSG.pack(_NLMSG.size + len(body), mtype,
                                    _NLM_F_REQUEST | _NLM_F_ACK | flags, seq, 0) + body)
        while True:  # the kernel answers before send returns; skip any stale answer
            data = self._sock.recv(65536)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, rtype, rflags, rseq, _ = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size:
                    break
                if rtype == _NLMSG_ERROR and rseq == seq:
                    error = _ack_error(data[offset + _NLMSG.size:offset + length], rflags)
                    if error is not None:
                        raise error
                    return
                offset += (length + 3) & ~3

    def htb_class(self, ifname: str, classid: int, rate_bps: int, burst_bytes: int) -> None:
        """HTB class ``classid`` (major << 16 | minor; a minor alone: the root's, 1:minor)
        at ``rate_bps`` with ``burst_bytes``, under its major's qdisc (made, or changed in
        place: its queue is kept)."""
        classid = classid if classid >> 16 else TC_ROOT | classid
        key = (rate_bps, burst_bytes)
        if key not in self._attributes:
            self._attributes[key] = _htb_class_attributes(rate_bps, burst_bytes)
        attributes = self._attributes[key]
        self._on(ifname, lambda index: self._request(
            _RTM_NEWTCLASS, _NLM_F_REPLACE | _NLM_F_CREATE, index, classid,
            classid & 0xFFFF0000, attributes))

    def htb_group(self, ifname: str, group_classid: int, major: int) -> None:
        """A nested HTB qdisc ``major``: as the qdisc of the root's class ``group_classid``,
        which has all the link's rate: 65,534 more class ids (kept if there)."""
        self._tc("replace-class", ifname, group_classid, TC_ROOT, rate=_GROUP_RATE,
                 ceil=_GROUP_RATE)
        self._tc("replace", ifname, major << 16, group_classid, default=0)

    def del_htb_class(self, ifname: str, classid: int) -> None:
        classid = classid if classid >> 16 else TC_ROOT | classid
        with contextlib.suppress(NetlinkError):  # gone already
            self._on(ifname, lambda index: self._request(  # no kind, as `tc class del`
                _RTM_DELTCLASS, 0, index, classid, classid & 0xFFFF0000, b""))

    def close(self) -> None:
        self._sock.close()
        self._ipr.close()


def attach_tc(ifname: str, prog_fd: int, direction: TcDirection, name: str,
              ns: str | None = None) -> None:
    """The tc program ``prog_fd`` as ``ifname``'s one classifier in ``direction`` (clsact,
    direct action), replacing the one there."""
    with route(ns) as ipr:
        idx = _index(ipr, ifname, ns)
        if not any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(idx)):
            ipr.tc("add", "clsact", idx)
        ipr.tc("replace-filter", "bpf", idx, _TC_FILTER_HANDLE, fd=prog_fd, name=name,
               parent=_CLSACT_PARENT[direction], prio=_TC_FILTER_PRIO, direct_action=True,
               protocol=0x0003)  # ETH_P_ALL (pyroute2 puts it in network order)


def attach_class_filter(ifname: str, prog_fd: int, name: str, ns: str | None = None) -> None:
    """The BPF program ``prog_fd`` as the one filter of ``ifname``'s HTB root, in classic
    mode (it returns the class id), replacing the one there."""
    with route(ns) as ipr:
        ipr.tc("replace-filter", "bpf", _index(ipr, ifname, ns), _TC_FILTER_HANDLE, fd=prog_fd,
               name=name, parent=TC_ROOT, prio=_TC_FILTER_PRIO, protocol=0x0003)


def tc_program_name(ifname: str, direction: TcDirection, ns: str | None = None) -> str | None:
    """The name of the BPF program classifying ``ifname``'s ``direction``, or None."""
    with route(ns) as ipr:
        idx = _index(ipr, ifname, ns)
        for f in ipr.get_filters(idx, parent=_CLSACT_PARENT[direction]):
            opts = f.get_attr("TCA_OPTIONS")
            if opts is not None and opts.get_attr("TCA_BPF_NAME"):
                return str(opts.get_attr("TCA_BPF_NAME"))
    return None


def htb_root_drops(ifname: str, ns: str | None = None) -> int:
    """Packets the HTB root of ``ifname`` (and its classes) dropped; 0 without one."""
    with route(ns) as ipr:
        try:
            idx = _index(ipr, ifname, ns)
        except InterfaceMissing:
            return 0
        for q in ipr.get_qdiscs(idx):
            if q.get_attr("TCA_KIND") == "htb" and q["parent"] == 0xFFFFFFFF:
                stats = q.get_attr("TCA_STATS")
                return int(stats["drop"]) if stats is not None else 0
    return 0


def remove_clsact(ifname: str, ns: str | None = None) -> bool:
    """Take the clsact qdisc (and every filter on it) off ``ifname``; True if there was
    one."""
    with route(ns) as ipr:
        idx = _index(ipr, ifname, ns)
        for q in ipr.get_qdiscs(idx):
            if q.get_attr("TCA_KIND") == "clsact":
                with contextlib.suppress(NetlinkError):
                    ipr.tc("del", index=idx, handle=q["handle"], parent=q["parent"])
                    return True
    return False


def remove_shaping(ifname: str, ns: str | None = None) -> None:
    """Take the HTB root and the clsact qdisc (with its programs) off ``ifname``."""
    with route(ns) as ipr:
        try:
            idx = _index(ipr, ifname, ns)
        except InterfaceMissing:
            return
        for q in ipr.get_qdiscs(idx):
            kind = q.get_attr("TCA_KIND")
            if (kind == "htb" and q["parent"] == 0xFFFFFFFF) or kind == "clsact":
                with contextlib.suppress(NetlinkError):
                    ipr.tc("del", index=idx, handle=q["handle"], parent=q["parent"])


# --- access subnets routed without a neighbour per subscriber -----------------------------

# The one neighbour every access subnet is routed through, on each access interface, with the
# interface's own MAC: the access data path's egress program puts the session's MAC and tags
# on each frame (bpf/access_qos.c), so the kernel resolves no subscriber. Link-local, and
# never on any wire.
ACCESS_NEXTHOP = "169.254.255.254"
_RTPROT_BNG = 250  # our routes' protocol (unassigned in rt_protos): told apart from the
#                    kernel's and an operator's
_NUD_PERMANENT = 0x80


def route_access_subnets(ifname: str, subnets: list[tuple[str, str]],
                         ns: str | None = None) -> list[str]:
    """Route each (network, gateway) whose gateway is an address of ``ifname`` through
    ACCESS_NEXTHOP, in place of its connected route. Returns the networks routed."""
    done = []
    with route(ns) as ipr:
        idx = _index(ipr, ifname, ns)
        mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        mine = {str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=idx, family=2)}
        ipr.neigh("replace", dst=ACCESS_NEXTHOP, lladdr=mac, ifindex=idx,
                  state=_NUD_PERMANENT)
        for network, gateway in subnets:
            if gateway not in mine:
                continue
            dst, plen = network.split("/")
            ipr.route("replace", dst=dst, dst_len=int(plen), oif=idx, gateway=ACCESS_NEXTHOP,
                      prefsrc=gateway, flags=4, proto=_RTPROT_BNG)  # RTNH_F_ONLINK
            done.append(network)
    return done


def unroute_access_subnets(ifname: str, ns: str | None = None) -> None:
    """Give ``ifname``'s access subnets their connected routes back (the kernel's own, from
    its addresses) and drop the fixed neighbour."""
    with route(ns) as ipr:
        try:
            idx = _index(ipr, ifname, ns)
        except InterfaceMissing:
            return
        for r in ipr.get_routes(family=2, oif=idx):
            if r["proto"] != _RTPROT_BNG:
                continue
            dst, plen = r.get_attr("RTA_DST"), r["dst_len"]
            src = r.get_attr("RTA_PREFSRC")
            with contextlib.suppress(NetlinkError):
                ipr.route("replace", dst=dst, dst_len=plen, oif=idx, prefsrc=src, scope=253,
                          proto=2)  # RT_SCOPE_LINK, RTPROT_KERNEL
        with contextlib.suppress(NetlinkError):
            ipr.neigh("del", dst=ACCESS_NEXTHOP, ifindex=idx)


def neighbours(ifname: str, ns: str | None = None) -> list[str]:
    """The IPv4 addresses in ``ifname``'s neighbour table (any state)."""
    with route(ns) as ipr:
        idx = _index(ipr, ifname, ns)
        return [str(n.get_attr("NDA_DST")) for n in ipr.get_neighbours(family=2, ifindex=idx)]

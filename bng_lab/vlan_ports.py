"""VLAN ports on the lab's access switch (see vlan_ports.c): 1:1 (a VLAN per subscriber),
QinQ (an S-VLAN per access node, a C-VLAN per subscriber) and N:1 (subscribers sharing a
VLAN), with the subscribers' namespaces untagged behind them, as behind an ONT or a DSLAM
port. Subscriber ports are isolated from each other (split horizon), as on an access node.

    tag_ports(site.switch, {"p0": (0x8100, 101, 0), "p1": (0x88A8, 200, 10)})
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bng_lab.netlab import in_netns
from bng_operator import netlink
from bng_operator.agent.dataplane.loader import BPFObject

SOURCE = Path(__file__).with_name("vlan_ports.c")
STAG_OFFLOAD = "tx-vlan-stag-hw-insert"

PortTags = tuple[int, int, int]  # (outer TPID, outer VID, inner VID; 0: one tag)


def tag_ports(switch: str, ports: dict[str, PortTags], uplink: str = "up0") -> None:
    """Tag each subscriber port of ``switch`` with its tags; frames towards the BNG leave
    ``uplink`` with their tags in the frame (as a NIC without tag offload receives them)."""
    with in_netns(switch):
        for feature in (netlink.TX_VLAN_OFFLOAD, STAG_OFFLOAD):
            netlink.set_feature(uplink, feature, False)
        with BPFObject(SOURCE) as obj:
            table = obj.map("port_tags")
            for port, (tpid, outer, inner) in ports.items():
                leaf = table.Leaf()
                leaf.outer_tpid, leaf.outer_vid, leaf.inner_vid = tpid, outer, inner
                table[table.Key(netlink.interface_info(port)[0])] = leaf
                netlink.attach_tc(port, obj.load_tc("port_in"), "ingress", "port_in")
                netlink.attach_tc(port, obj.load_tc("port_out"), "egress", "port_out")
        for port in ports:
            subprocess.run(["bridge", "link", "set", "dev", port, "isolated", "on"], check=True)

// The access data path (bpf/access_qos.c): VLAN termination, anti-spoofing and shaping.
// Layouts shared with userspace, and every map, declared once. Mirrored in
// bng_operator/agent/dataplane/qos.py; tests/bpf/test_qos.py checks that both sides agree.
#pragma once
#include "lib/access.h"

#ifndef MAX_SUBSCRIBERS
#define MAX_SUBSCRIBERS 100000
#endif
#define QOS_INTERFACES 64
// HTB class ids past the root's (bng_operator/agent/qos/plan.py): group M's qdisc M: is the
// qdisc of root class 1:(QOS_GROUP_CLASS_BASE + M).
#define QOS_GROUP_CLASS_BASE 0xF000
#define QOS_FIRST_GROUP 2
#define QOS_LAST_GROUP 0xFFE

// A bound session, by its address (network byte order): what its frames must carry
// (anti-spoofing, upstream), what to put on the packets to it (downstream, in place of a
// neighbour entry), and its shaping. The class ids are HTB classes (major:minor): on the
// access interface's root for the download, on its IFB's root for the upload; 0: unshaped.
struct qos_session {
    __u32 down_class;
    __u32 up_class;
    __be32 gateway;        // the address its ARP may ask for
    __u8 mac[6];
    __be16 outer_tpid;     // ETH_P_8021Q or ETH_P_8021AD; 0: untagged
    __u16 outer_vid;
    __u16 inner_vid;       // 0: one tag (or none)
    __u8 routed;           // 1: behind an L3 relay: its frames carry the relay's MAC, and
                           //   the kernel routes to it; its address is all that is checked
    __u8 used;             // 1: an entry of qos_slots in use (0: a free slot)
    __u8 pad[2];
    __u32 slot;            // its counters: the index into qos_counters and qos_slots (an
                           //   array lookup is inlined; a second hash lookup cost ~600 ns)
    __be32 address;        // its own address: qos_slots is indexed by address, not keyed
};

// An access interface, by ifindex: its MAC (ARP answers) and its IFB (the upload's queue).
struct access_interface {
    __u32 ifb;             // 0: none; the upload passes unshaped
    __u8 mac[6];
    __u16 pad;
};

// Per CPU, per session: its traffic. Summed by the agent for the Subscriber status
// (and, later, RADIUS accounting and idle timeouts).
struct qos_counters {
    __u64 packets_down;    // packets as on the wire: a GSO packet as its segments
    __u64 bytes_down;      // IP bytes as on the wire (every segment's headers; no Ethernet
    __u64 packets_up;      //   header, VLAN tags or FCS), counted before HTB: a packet HTB
    __u64 bytes_up;        //   drops is counted
    __u64 last_seen;       // jiffies (bpf_jiffies64) of this CPU's last packet, either way;
                           //   the agent converts to CLOCK_MONOTONIC (agent/qos/jiffies.py)
};

// What the access data path did with a packet (index into qos_stats).
enum qos_stat {
    QOS_DOWN_SHAPED = 0,   // to a session (shaped, or sent unshaped when its class is 0)
    QOS_DOWN_NOT_IPV4,     // ARP, IPv6, ...: not a session's traffic
    QOS_DOWN_UNKNOWN,      // to an address with no session (the gateway's own, ...)
    QOS_UP_SHAPED,         // from a session, checked
    QOS_UP_NOT_IPV4,       // untagged, not IPv4: passed (not a subscriber's)
    QOS_UP_NO_IFB,         // the access interface has no IFB: passed unshaped
    QOS_UP_DHCP,           // DHCP to the server: never queued (the IFB would hand it to the
                           //   agent's packet socket a second time)
    QOS_DOWN_NO_SESSION,   // dropped: routed to the access subnets, but to no session
    QOS_SPOOF_SOURCE,      // dropped: from an address no session holds
    QOS_SPOOF_MAC,         // dropped: a session's address from another MAC
    QOS_SPOOF_VLAN,        // dropped: a session's address on other VLAN tags
    QOS_SPOOF_NOT_IPV4,    // dropped: tagged, neither IPv4 nor ARP
    QOS_ARP_ANSWERED,      // a session's ARP for its gateway, answered in XDP
    QOS_ARP_PASSED,        // untagged ARP of no session (a relay, a router): to the kernel
    QOS_ARP_DROPPED,       // dropped: tagged ARP of no session, or not for its gateway
    QOS_STATS_MAX,
};

// The sessions: the hash is the source of truth (adopted on restart); qos_slots holds each
// session again at its counters slot, which is its address % MAX_SUBSCRIBERS whenever that
// was free (a pool's addresses are contiguous: nearly always). Programs look there first:
// an array lookup the verifier inlines, against a hash lookup's call and hashing
// (qos_session_of in access_qos.c: BCC rewrites map calls in the main file only).
BPF_TABLE("hash", __be32, struct qos_session, qos_sessions, MAX_SUBSCRIBERS);
BPF_TABLE("array", __u32, struct qos_session, qos_slots, MAX_SUBSCRIBERS);
BPF_TABLE("percpu_array", __u32, struct qos_counters, qos_counters, MAX_SUBSCRIBERS);
BPF_TABLE("hash", __u32, struct access_interface, access_interfaces, QOS_INTERFACES);
BPF_TABLE("percpu_array", __u32, __u64, qos_stats, QOS_STATS_MAX);

// The access data path's shaping: layouts shared with userspace, and every map, declared
// once. Mirrored in bng_operator/agent/dataplane/qos.py; tests/bpf/test_qos.py checks that
// both sides agree.
#pragma once

#ifndef MAX_SUBSCRIBERS
#define MAX_SUBSCRIBERS 100000
#endif
#define QOS_INTERFACES 64

// A bound session's shaping, by its address (network byte order). The class ids are HTB
// classes (major:minor): on the access interface's root for the download, on its IFB's
// root for the upload. The same minor on both.
struct qos_session {
    __u32 down_class;
    __u32 up_class;
};

// Per CPU, per session: what the shaper saw. Summed by the agent for the Subscriber status
// (and, later, RADIUS accounting and idle timeouts).
struct qos_counters {
    __u64 packets_down;
    __u64 bytes_down;      // as the skb's length: Ethernet header and payload, no FCS
    __u64 packets_up;
    __u64 bytes_up;
    __u64 last_seen_ns;    // bpf_ktime_get_ns() of this CPU's last packet, either way
};

// Why a packet went unshaped (index into qos_stats).
enum qos_stat {
    QOS_DOWN_SHAPED = 0,
    QOS_DOWN_NOT_IPV4,     // ARP, IPv6, ...: not a session's traffic
    QOS_DOWN_UNKNOWN,      // to an address with no session (the gateway's own, ...)
    QOS_UP_SHAPED,
    QOS_UP_NOT_IPV4,
    QOS_UP_UNKNOWN,        // from an address with no session (DHCP from 0.0.0.0, ...)
    QOS_UP_NO_IFB,         // the access interface has no IFB: passed unshaped
    QOS_UP_DHCP,           // DHCP to the server: never queued (the IFB would hand it to the
                           //   agent's packet socket a second time)
    QOS_STATS_MAX,
};

BPF_TABLE("hash", __be32, struct qos_session, qos_sessions, MAX_SUBSCRIBERS);
BPF_TABLE("percpu_hash", __be32, struct qos_counters, qos_counters, MAX_SUBSCRIBERS);
// access interface ifindex -> its IFB's ifindex (the upload is shaped on the IFB's egress)
BPF_TABLE("hash", __u32, __u32, qos_ifbs, QOS_INTERFACES);
BPF_TABLE("percpu_array", __u32, __u64, qos_stats, QOS_STATS_MAX);

// Flow events: what the programs did with a packet, for observers (the agent's Hubble API,
// bng_operator/agent/observe/). Every program writes them into one flow log, per CPU,
// pinned above the program generations (<bpf-dir>/flow_heads and flow_log, with flow_ctl),
// and only while flow_ctl says someone is watching: with nobody watching, a program pays
// one inlined array lookup per event it could have sent. Mirrored in
// bng_operator/agent/observe/flow.py and dataplane/flows.py; tests/bpf/test_flows.py
// checks that both sides agree.
//
// BCC rewrites map calls in a program's own C file only, so each program has its own
// observed() and flow_next() (a few lines each); the header fills events.
#pragma once

#include "lib/cpulog.h"

#ifndef FLOW_EVENTS
#define FLOW_EVENTS 1
#endif

// Which program saw the packet (the meaning of `reason`).
enum flow_source {
    FLOW_SRC_DHCP = 1,     // access_ingress.c (XDP): reason is a counter (enum in lib/dhcp.h)
    FLOW_SRC_ACCESS = 2,   // access_qos.c (tc, XDP ARP): reason is an enum qos_stat
    FLOW_SRC_NAT = 3,      // nat44.c (tc on the uplink): reason is an enum nat_stat
};

enum flow_verdict {
    FLOW_FORWARDED = 1,
    FLOW_DROPPED = 2,
    FLOW_TRANSLATED = 7,   // the values are Hubble's (flow.Verdict)
};

// Hubble's trace observation points for a forwarded packet.
enum flow_point {
    FLOW_TO_NETWORK = 1,   // sent back out of the interface (XDP_TX: a reply)
    FLOW_TO_STACK = 2,     // handed to the kernel's stack (XDP_PASS: the slow path)
    FLOW_NONE = 0,
};

struct flow_event {
    __u64 jiffies;         // bpf_jiffies64(): an inlined load; a clock helper (~40 ns a
                           //   call here) cost more than the rest of the event. The agent
                           //   turns it into wall time, to a tick (4 ms at HZ=250)
    __u32 ifindex;
    __u8 source;           // enum flow_source
    __u8 verdict;          // enum flow_verdict
    __u8 point;            // enum flow_point
    __u8 reason;
    __u8 src_mac[6];
    __u8 dst_mac[6];
    __u16 vlan_outer;      // VLAN ids, 0: none
    __u16 vlan_inner;
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    __u8 proto;
    __u8 dhcp_type;        // DHCP message type, 0: not DHCP
    __u16 pad;
    __be32 dhcp_yiaddr;    // DHCP: the address offered or acknowledged
    __be32 xid;            // DHCP: the transaction id
    __be32 xlated_addr;    // NAT: the translated source (egress) or destination (ingress)
    __be16 xlated_port;
    __u16 pad2;
};

// Whether anyone watches (the agent sets it while it has observers).
struct flow_ctl {
    __u32 observers;
    __u32 lost;            // unused: written by the ring buffer's programs (before the flow
                           //   log), kept so that a pinned flow_ctl is adopted
};
BPF_TABLE("array", __u32, struct flow_ctl, flow_ctl, 1);

// The flow log, a per-CPU log (lib/cpulog.h): FLOW_LOG_LEN events a CPU in flow_log, a
// head a CPU in flow_heads. No helper call, no lock, no wake-up: with a ring buffer's
// reserve and submit a watched fast-path reply cost ~26% more than an unwatched one, with
// this 12.5-19.7% (bench/xdp_cost.py, docs/observe.md). The newest event overwrites the
// oldest; the agent reads both maps mmapped every FLOW_READ_MS, keeps where it got to in
// tail, and counts what was overwritten before it read it as lost.
#define FLOW_LOG_LEN 4096  // a power of two: 256 KiB a CPU, as Cilium's perf ring (64 pages)
#define FLOW_READ_MS 50
struct flow_log_head {
    __u64 head;            // events this CPU has written, ever
    __u64 tail;            // the agent's: how many of them it has read
    __u64 pad[6];          // a cache line each: no CPU writes another's
};
BPF_F_TABLE("array", __u32, struct flow_log_head, flow_heads, MAX_CPUS, BPF_F_MMAPABLE);
BPF_F_TABLE("array", __u32, struct flow_event, flow_log, MAX_CPUS * FLOW_LOG_LEN,
            BPF_F_MMAPABLE);

// What every event starts with: when, where, which program, and what it did.
static __always_inline void flow_head(struct flow_event *ev, __u32 ifindex, __u8 source,
                                      __u8 verdict, __u8 reason)
{
    ev->jiffies = bpf_jiffies64();
    ev->ifindex = ifindex;
    ev->source = source;
    ev->verdict = verdict;
    ev->reason = reason;
}

struct flow_vlan {
    __be16 tci;
    __be16 proto;
};

// The L2 to L4 of a frame at offset 0 (XDP's data): MACs, up to two VLAN tags, IPv4
// addresses, ports, and, for BOOTP, its message type is the caller's. Returns the UDP
// payload's offset (0: not IPv4 UDP or truncated).
static __always_inline __u32 flow_from_frame(void *data, void *end, struct flow_event *ev)
{
    __u8 *eth = data;
    if ((void *)(eth + 14) > end)
        return 0;
    __builtin_memcpy(ev->dst_mac, eth, 6);
    __builtin_memcpy(ev->src_mac, eth + 6, 6);
    __be16 proto = *(__be16 *)(eth + 12);
    __u32 off = 14;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (proto != bpf_htons(0x8100) && proto != bpf_htons(0x88A8))
            break;
        struct flow_vlan *tag = data + off;
        if ((void *)(tag + 1) > end)
            return 0;
        if (i == 0)
            ev->vlan_outer = bpf_ntohs(tag->tci) & 0x0fff;
        else
            ev->vlan_inner = bpf_ntohs(tag->tci) & 0x0fff;
        proto = tag->proto;
        off += sizeof(*tag);
    }
    if (proto != bpf_htons(0x0800))
        return 0;
    struct iphdr *ip = data + off;
    if ((void *)(ip + 1) > end)
        return 0;
    ev->saddr = ip->saddr;
    ev->daddr = ip->daddr;
    ev->proto = ip->protocol;
    if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP)
        return 0;
    __u32 l4 = off + (ip->ihl & 0x0f) * 4;
    __be16 *ports = data + (l4 & 0xff);
    if ((void *)(ports + 4) > end)
        return 0;
    ev->sport = ports[0];
    ev->dport = ports[1];
    return ip->protocol == IPPROTO_UDP ? (l4 & 0xff) + 8 : 0;
}

// The same from an skb at tc. The stack may have taken the outer tag into the skb; a tag
// still in the data is then the inner one.
static __always_inline void flow_from_skb(struct __sk_buff *skb, struct flow_event *ev)
{
    __u8 macs[12];
    if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)))
        return;
    __builtin_memcpy(ev->dst_mac, macs, 6);
    __builtin_memcpy(ev->src_mac, macs + 6, 6);
    __be16 proto = skb->protocol;
    __u32 off = 14, tags = 0;
    if (skb->vlan_present) {
        ev->vlan_outer = skb->vlan_tci & 0x0fff;
        tags = 1;
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (proto != bpf_htons(0x8100) && proto != bpf_htons(0x88A8))
            break;
        struct flow_vlan tag;
        if (bpf_skb_load_bytes(skb, off, &tag, sizeof(tag)))
            return;
        if (tags == 0)
            ev->vlan_outer = bpf_ntohs(tag.tci) & 0x0fff;
        else
            ev->vlan_inner = bpf_ntohs(tag.tci) & 0x0fff;
        tags += 1;
        proto = tag.proto;
        off += sizeof(tag);
    }
    if (proto != bpf_htons(0x0800))
        return;
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)))
        return;
    ev->saddr = ip.saddr;
    ev->daddr = ip.daddr;
    ev->proto = ip.protocol;
    if (ip.protocol != IPPROTO_UDP && ip.protocol != IPPROTO_TCP)
        return;
    __be16 ports[2];
    if (bpf_skb_load_bytes(skb, (off + (ip.ihl & 0x0f) * 4) & 0xff, ports, sizeof(ports)))
        return;
    ev->sport = ports[0];
    ev->dport = ports[1];
}

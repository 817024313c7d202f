// The access data path: subscriber traffic on the access interface, terminated here, with
// no kernel subinterface and no neighbour entry per subscriber. Every program finds the
// session by the subscriber's address: in its slot of qos_slots, else in qos_sessions.
//
//   access_arp  XDP, tail-called by the DHCP fast path (lib/access.h) for ARP: a session's
//               request for its gateway is answered in place (XDP_TX), on its tags, with
//               the interface's MAC. Other tagged ARP is dropped; untagged ARP of no
//               session (a relay, a router) goes to the kernel.
//   qos_up      tc ingress: anti-spoofing (the source address must be a session's, from
//               its MAC, on its tags), then the tags come off, the packet is counted and
//               redirected to the egress of the interface's IFB, whose HTB shapes the upload
//               (a queue, not a policer: a drop policer with a burst small against
//               rate x RTT collapses TCP). The IFB hands it back to the access interface's
//               ingress, past tc, and the stack routes it.
//   qos_group   the filter of each HTB root: sessions past the root's 65k classes.
//   qos_down    tc egress: to a session, the frame gets the session's MAC and tags (the
//               kernel routes the access subnets through one fixed neighbour, see
//               dataplane/qos.py), is counted, and skb->priority (major:minor) names its HTB
//               class, which HTB takes before any filter. No filter chain grows with
//               subscribers.
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>

#include "lib/qos.h"
#include "lib/flow.h"

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define VID_MASK 0x0fff

struct vlan_tag {
    __be16 tci;
    __be16 proto;
};

struct arp_eth {
    __be16 htype;
    __be16 ptype;
    __u8 hlen;
    __u8 plen;
    __be16 op;
    __u8 sha[6];
    __be32 spa;
    __u8 tha[6];
    __be32 tpa;
} __attribute__((packed));

// A frame's VLAN tags, outermost first (0: none).
struct tags {
    __be16 outer_tpid;
    __u16 outer_vid;
    __u16 inner_vid;
    __u16 count;
};

static __always_inline void stat(__u32 idx)
{
    __u64 *c = qos_stats.lookup(&idx);
    if (c)
        *c += 1;
}

static __always_inline int observed(void)
{
#if FLOW_EVENTS
    __u32 zero = 0;
    struct flow_ctl *fc = flow_ctl.lookup(&zero);
    return fc && fc->observers;
#else
    return 0;
#endif
}

// The event into this CPU's next slot of the flow log (lib/flow.h).
static __always_inline void flow_send(struct flow_event *ev)
{
#if FLOW_EVENTS
    __u32 cpu = bpf_get_smp_processor_id();
    struct flow_log_head *log = flow_heads.lookup(&cpu);
    if (!log)
        return;
    __u32 slot = cpulog_slot(cpu, log->head, FLOW_LOG_LEN);
    struct flow_event *to = flow_log.lookup(&slot);
    if (to) {
        *to = *ev;
        cpulog_publish(&log->head, log->head + 1);
    }
#endif
}

static __always_inline void flow_drop_skb(struct __sk_buff *skb, __u32 reason)
{
#if FLOW_EVENTS
    struct flow_event ev = {};
    flow_head(&ev, skb->ifindex, FLOW_SRC_ACCESS, FLOW_DROPPED, reason);
    flow_from_skb(skb, &ev);
    flow_send(&ev);
#endif
}

static __always_inline int is_vlan(__be16 proto)
{
    return proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_);
}

// Byte by byte: neither side is aligned (packet, stack, a field after a MAC).
static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
    return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) |
            (a[5] ^ b[5])) == 0;
}

// Whether a frame's tags are the session's.
static __always_inline int same_tags(const struct tags *t, const struct qos_session *s)
{
    return t->outer_tpid == s->outer_tpid && t->outer_vid == s->outer_vid &&
           t->inner_vid == s->inner_vid;
}

// The session holding ``addr`` (network order), or NULL: its own slot if the session there
// is it, else the hash (a session whose slot was taken by another's address).
static __always_inline struct qos_session *qos_session_of(__be32 addr)
{
    __u32 idx = bpf_ntohl(addr) % MAX_SUBSCRIBERS;
    struct qos_session *s = qos_slots.lookup(&idx);
    if (s && s->used && s->address == addr)
        return s;
    return qos_sessions.lookup(&addr);
}

// --- ARP (XDP) ---------------------------------------------------------------------------

static __always_inline int arp_verdict(struct xdp_md *ctx, __u32 stat_idx)
{
    stat(stat_idx);
    if (stat_idx == QOS_ARP_PASSED)
        return XDP_PASS;
#if FLOW_EVENTS
    if (observed()) {
        struct flow_event ev = {};
        flow_head(&ev, ctx->ingress_ifindex, FLOW_SRC_ACCESS, FLOW_DROPPED, stat_idx);
        flow_from_frame((void *)(long)ctx->data, (void *)(long)ctx->data_end, &ev);
        flow_send(&ev);
    }
#endif
    return XDP_DROP;
}

int access_arp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    struct tags t = {};
    __be16 proto = eth->h_proto;
    __u32 l3 = sizeof(*eth);
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (!is_vlan(proto))
            break;
        struct vlan_tag *tag = data + l3;
        if ((void *)(tag + 1) > end)
            return XDP_DROP;
        if (i == 0) {
            t.outer_tpid = proto;
            t.outer_vid = bpf_ntohs(tag->tci) & VID_MASK;
        } else {
            t.inner_vid = bpf_ntohs(tag->tci) & VID_MASK;
        }
        t.count += 1;
        proto = tag->proto;
        l3 += sizeof(*tag);
    }
    if (proto != bpf_htons(ETH_P_ARP))
        return XDP_PASS;
    struct arp_eth *arp = data + l3;
    if ((void *)(arp + 1) > end)
        return arp_verdict(ctx, t.count ? QOS_ARP_DROPPED : QOS_ARP_PASSED);
    __be32 spa = arp->spa;
    struct qos_session *s = qos_session_of(spa);
    if (!s)
        return arp_verdict(ctx, t.count ? QOS_ARP_DROPPED : QOS_ARP_PASSED);
    // A session's: answered when it asks for its gateway as itself, else dropped (the
    // kernel would learn a neighbour from it, and nothing else of a session's is ARP's).
    if (s->routed || arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IP) ||
        arp->hlen != 6 || arp->plen != 4 || arp->op != bpf_htons(1) ||
        arp->tpa != s->gateway || !same_mac(arp->sha, s->mac) ||
        !same_mac(eth->h_source, s->mac) || !same_tags(&t, s))
        return arp_verdict(ctx, QOS_ARP_DROPPED);
    __u32 ifindex = ctx->ingress_ifindex;
    struct access_interface *ai = access_interfaces.lookup(&ifindex);
    if (!ai)
        return arp_verdict(ctx, QOS_ARP_PASSED);
    // The reply, in place: on the request's tags, from the interface's MAC.
    __builtin_memcpy(eth->h_dest, s->mac, 6);
    __builtin_memcpy(eth->h_source, ai->mac, 6);
    arp->op = bpf_htons(2);
    __builtin_memcpy(arp->tha, s->mac, 6);
    arp->tpa = spa;
    __builtin_memcpy(arp->sha, ai->mac, 6);
    arp->spa = s->gateway;
    stat(QOS_ARP_ANSWERED);
    return XDP_TX;
}

// --- tc ------------------------------------------------------------------------------------

// The tags of a frame at tc: the stack has taken the outer one into skb->vlan_tci; the inner
// (or, in BPF_PROG_RUN, both) is still in the data. Returns the L3 offset, or -1.
static __always_inline int tc_tags(struct __sk_buff *skb, struct tags *t, __be16 *proto)
{
    int l3 = ETH_HLEN;
    *proto = skb->protocol;
    if (skb->vlan_present) {
        t->outer_tpid = (__be16)skb->vlan_proto;
        t->outer_vid = skb->vlan_tci & VID_MASK;
        t->count = 1;
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (!is_vlan(*proto) || t->count >= 2)
            break;
        struct vlan_tag tag;
        if (bpf_skb_load_bytes(skb, l3, &tag, sizeof(tag)))
            return -1;
        if (t->count == 0) {
            t->outer_tpid = *proto;
            t->outer_vid = bpf_ntohs(tag.tci) & VID_MASK;
        } else {
            t->inner_vid = bpf_ntohs(tag.tci) & VID_MASK;
        }
        t->count += 1;
        *proto = tag.proto;
        l3 += sizeof(tag);
    }
    return l3;
}

// The packet's bytes at the IP layer, as they cross the wire. A GSO packet (TCP
// segmentation offload on its way out, GRO on its way in) is gso_segs packets on the wire,
// each with its own IP and TCP (or UDP) headers, but skb->len holds those headers once:
// counted as skb->len, a 64 KB TCP super-packet of 45 segments lacks 44 x 52 bytes (3.4%).
// qdisc_pkt_len_init() does the same sum for HTB, which shapes on it. Untagged here: the
// tags are off (upstream) or not yet on (downstream).
static __always_inline __u64 ip_bytes(struct __sk_buff *skb, __u32 segs)
{
    __u64 len = skb->len - ETH_HLEN;
    if (segs <= 1)
        return len;
    __u8 ihl = 0, proto = 0, doff = 0;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ihl, 1) ||
        bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, protocol), &proto, 1))
        return len;
    __u32 headers = (ihl & 0x0f) * 4;
    if (proto == IPPROTO_TCP) {
        if (bpf_skb_load_bytes(skb, ETH_HLEN + headers + 12, &doff, 1))  // data offset
            return len;
        headers += (doff >> 4) * 4;
    } else if (proto == IPPROTO_UDP) {
        headers += sizeof(struct udphdr);
    }
    return len + (__u64)(segs - 1) * headers;
}

// The packet into the session's counters, one way (``up``: from the subscriber): packets
// and IP bytes as on the wire, a GSO packet as its segments.
static __always_inline void count(struct __sk_buff *skb, struct qos_session *s, int up)
{
    __u32 slot = s->slot;
    struct qos_counters *c = qos_counters.lookup(&slot);
    if (!c)
        return;
    __u32 segs = skb->gso_segs;
    if (segs < 1)
        segs = 1;
    __u64 bytes = ip_bytes(skb, segs);
    if (up) {
        c->packets_up += segs;
        c->bytes_up += bytes;
    } else {
        c->packets_down += segs;
        c->bytes_down += bytes;
    }
    // jiffies: a load of a variable (bpf_ktime_get_coarse_ns was a helper call a packet),
    // stored only when it moved (one store a tick per CPU, not one a packet)
    __u64 now = bpf_jiffies64();
    if (c->last_seen != now)
        c->last_seen = now;
}

static __always_inline int drop(struct __sk_buff *skb, __u32 reason)
{
    stat(reason);
    if (observed())
        flow_drop_skb(skb, reason);
    return TC_ACT_SHOT;
}

int qos_down(struct __sk_buff *skb)
{
    if (skb->protocol != bpf_htons(ETH_P_IP)) {
        stat(QOS_DOWN_NOT_IPV4);
        return TC_ACT_OK;
    }
    // Read in place when the header is in the linear part (always, but for a crafted skb):
    // bpf_skb_load_bytes is a helper call a packet.
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct iphdr *iph = data + ETH_HLEN;
    __be32 dst = 0;
    if ((void *)(iph + 1) <= end)
        dst = iph->daddr;
    else if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, daddr), &dst, 4))
        return TC_ACT_OK;
    struct qos_session *s = qos_session_of(dst);
    if (!s) {
        // The access route's fixed neighbour has the interface's own MAC: a frame from it to
        // itself was routed to the subscribers, and no session has its address.
        __u8 macs[12];
        if (!bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) && same_mac(macs, macs + 6))
            return drop(skb, QOS_DOWN_NO_SESSION);
        stat(QOS_DOWN_UNKNOWN);
        return TC_ACT_OK;
    }
    __u32 prio = s->down_class;
    count(skb, s, 0);
    if (!s->routed) {
        __u8 mac[6];
        __builtin_memcpy(mac, s->mac, 6);
        __be16 outer_tpid = s->outer_tpid;
        __u16 outer_vid = s->outer_vid, inner_vid = s->inner_vid;
        if (bpf_skb_store_bytes(skb, 0, mac, 6, 0))
            return TC_ACT_SHOT;
        // The inner tag first: a push moves the tag already held into the frame.
        if (inner_vid && bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q_), inner_vid))
            return TC_ACT_SHOT;
        if (outer_tpid && bpf_skb_vlan_push(skb, outer_tpid, outer_vid))
            return TC_ACT_SHOT;
    }
    skb->priority = prio;
    stat(QOS_DOWN_SHAPED);
    return TC_ACT_OK;
}

int qos_up(struct __sk_buff *skb)
{
    struct tags t = {};
    __be16 proto;
    int l3 = tc_tags(skb, &t, &proto);
    if (l3 < 0)
        return drop(skb, QOS_SPOOF_NOT_IPV4);
    if (proto != bpf_htons(ETH_P_IP)) {
        if (t.count)
            return drop(skb, proto == bpf_htons(ETH_P_ARP) ? QOS_ARP_DROPPED : QOS_SPOOF_NOT_IPV4);
        stat(QOS_UP_NOT_IPV4);
        return TC_ACT_OK;
    }
    l3 &= 0xff;
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)))
        return drop(skb, QOS_SPOOF_NOT_IPV4);
    // DHCP to the server is the agent's (its packet socket saw it already) and never queued:
    // after the IFB a request would pass that socket again, and be answered twice.
    if (ip.protocol == IPPROTO_UDP) {
        __be16 dport = 0;
        if (!bpf_skb_load_bytes(skb, l3 + ip.ihl * 4 + offsetof(struct udphdr, dest), &dport,
                                2) && dport == bpf_htons(67)) {
            stat(QOS_UP_DHCP);
            return TC_ACT_OK;
        }
    }
    __be32 src = ip.saddr;
    struct qos_session *s = qos_session_of(src);
    if (!s)
        return drop(skb, QOS_SPOOF_SOURCE);
    __u32 prio = s->up_class;
    if (!s->routed) {
        __u8 from[6];
        if (bpf_skb_load_bytes(skb, 6, from, 6) || !same_mac(from, s->mac))
            return drop(skb, QOS_SPOOF_MAC);
        if (!same_tags(&t, s))
            return drop(skb, QOS_SPOOF_VLAN);
        // Terminated: the stack routes it untagged.
        for (int i = 0; i < 2; i++)
            if (i < t.count && bpf_skb_vlan_pop(skb))
                return TC_ACT_SHOT;
    }
    count(skb, s, 1);
    stat(QOS_UP_SHAPED);
    if (!prio)
        return TC_ACT_OK;
    __u32 ifindex = skb->ifindex;
    struct access_interface *ai = access_interfaces.lookup(&ifindex);
    if (!ai || !ai->ifb) {
        stat(QOS_UP_NO_IFB);
        return TC_ACT_OK;
    }
    skb->priority = prio;
    return bpf_redirect(ai->ifb, 0);
}

// The filter of each HTB root (classic mode: the return value is the class id). HTB finds a
// root class by skb->priority without it; a session of a group (major M >= 2: past the
// root's 65k class ids) is sent on to the root class whose qdisc is group M, and that
// qdisc finds the session's class M:minor by skb->priority in turn. 0: no match (HTB's
// direct queue, unshaped).
int qos_group(struct __sk_buff *skb)
{
    __u32 major = skb->priority >> 16;
    if (major < QOS_FIRST_GROUP || major > QOS_LAST_GROUP)
        return 0;
    return (1 << 16) | (QOS_GROUP_CLASS_BASE + major);
}

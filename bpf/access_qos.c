// Shaping on the access interface (tc clsact, direct action): pick each packet's HTB class
// with one map lookup by the subscriber's address, and count its bytes. No filter chain
// grows with subscribers: the classes live in one HTB per direction, and skb->priority
// (major:minor) names the class, which HTB takes before any filter.
//
//   qos_down  egress of the access interface: by destination, to the interface's HTB.
//   qos_up    ingress of the access interface: by source, then redirected to the egress of
//             the interface's IFB, whose HTB shapes the upload (a queue, not a policer: a
//             drop policer with a burst small against rate x RTT collapses TCP). The IFB
//             hands the packet back to the access interface's ingress, past tc.
//
// Frames here are untagged IPv4 (VLAN termination is later work: see docs/qos.md).
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>

#include "lib/qos.h"

static __always_inline void stat(__u32 idx)
{
    __u64 *c = qos_stats.lookup(&idx);
    if (c)
        *c += 1;
}

// The IPv4 address at ``off`` in the packet (0 when it is not an IPv4 packet).
static __always_inline __be32 address(struct __sk_buff *skb, __u32 off)
{
    if (skb->protocol != bpf_htons(ETH_P_IP))
        return 0;
    __be32 a = 0;
    if (bpf_skb_load_bytes(skb, ETH_HLEN + off, &a, sizeof(a)))
        return 0;
    return a;
}

// The session at the packet's address ``off`` (destination or source), or NULL, counted
// under ``not_ipv4`` or ``unknown`` by why not.
static __always_inline struct qos_session *session_at(struct __sk_buff *skb, __u32 off,
                                                      __u32 not_ipv4, __u32 unknown,
                                                      __be32 *addr)
{
    *addr = address(skb, off);
    if (!*addr) {
        stat(not_ipv4);
        return NULL;
    }
    struct qos_session *s = qos_sessions.lookup(addr);
    if (!s)
        stat(unknown);
    return s;
}

// The packet into the session's counters, one way (``up``: from the subscriber).
static __always_inline void count(struct __sk_buff *skb, __be32 *addr, int up)
{
    struct qos_counters *c = qos_counters.lookup(addr);
    if (!c)
        return;
    if (up) {
        c->packets_up += 1;
        c->bytes_up += skb->len;
    } else {
        c->packets_down += 1;
        c->bytes_down += skb->len;
    }
    c->last_seen_ns = bpf_ktime_get_ns();
}

int qos_down(struct __sk_buff *skb)
{
    __be32 dst;
    struct qos_session *s = session_at(skb, offsetof(struct iphdr, daddr), QOS_DOWN_NOT_IPV4,
                                       QOS_DOWN_UNKNOWN, &dst);
    if (!s)
        return TC_ACT_OK;
    skb->priority = s->down_class;
    count(skb, &dst, 0);
    stat(QOS_DOWN_SHAPED);
    return TC_ACT_OK;
}

int qos_up(struct __sk_buff *skb)
{
    __be32 src;
    struct qos_session *s = session_at(skb, offsetof(struct iphdr, saddr), QOS_UP_NOT_IPV4,
                                       QOS_UP_UNKNOWN, &src);
    if (!s)
        return TC_ACT_OK;
    // DHCP to the server is not queued: after the IFB the packet passes the agent's packet
    // socket again, and a request seen twice is answered twice.
    __u8 proto = 0;
    __u8 ihl = 0;
    __be16 dport = 0;
    if (!bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, protocol), &proto, 1) &&
        proto == IPPROTO_UDP && !bpf_skb_load_bytes(skb, ETH_HLEN, &ihl, 1) &&
        !bpf_skb_load_bytes(skb, ETH_HLEN + (ihl & 0x0f) * 4 + offsetof(struct udphdr, dest),
                            &dport, 2) && dport == bpf_htons(67)) {
        stat(QOS_UP_DHCP);
        return TC_ACT_OK;
    }
    __u32 ifindex = skb->ifindex;
    __u32 *ifb = qos_ifbs.lookup(&ifindex);
    if (!ifb) {
        stat(QOS_UP_NO_IFB);
        return TC_ACT_OK;
    }
    skb->priority = s->up_class;
    count(skb, &src, 1);
    stat(QOS_UP_SHAPED);
    return bpf_redirect(*ifb, 0);
}

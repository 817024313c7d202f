// XDP on the access interface: answer DHCP from known subscribers in the kernel.
//
// A DISCOVER or REQUEST from a subscriber with a valid lease in the `subscribers` map is
// turned into its OFFER or ACK in place and sent back with XDP_TX. Everything else goes to
// the slow path (XDP_PASS), counted by reason. The reply's DHCP payload has a fixed size
// (REPLY_DHCP_LEN), so every offset below is a constant the verifier can check once.
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#include "lib/maps.h"

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8

struct vlan_tag {
    __be16 tci;
    __be16 proto;
};

struct bootp {
    __u8 op, htype, hlen, hops;
    __be32 xid;
    __be16 secs, flags;
    __be32 ciaddr, yiaddr, siaddr, giaddr;
    __u8 chaddr[16];
    __u8 sname[64];
    __u8 file[128];
    __be32 magic;
} __attribute__((packed));

static __always_inline void count(int idx)
{
    __u64 *c = counters.lookup(&idx);
    if (c)
        *c += 1;
}

static __always_inline int pass(int idx)
{
    count(idx);
    return XDP_PASS;
}

static __always_inline __u16 fold(__u64 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return ~s & 0xffff;
}

// Zero n bytes (a multiple of 8) of the packet; a large memset would become a call.
static __always_inline void zero(__u8 *p, const int n)
{
#pragma unroll
    for (int i = 0; i < n / 8; i++)
        *(__u64 *)(p + i * 8) = 0;
}

static __always_inline void put32(__u8 *p, __u32 host)
{
    p[0] = host >> 24;
    p[1] = host >> 16;
    p[2] = host >> 8;
    p[3] = host;
}

static __always_inline int reply(struct xdp_md *ctx, struct parse_state *st);

int xdp_dhcp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return pass(CNT_PASS_NOT_DHCP);

    // Ethernet, then up to two VLAN tags (802.1Q / QinQ).
    __be16 proto = eth->h_proto;
    __u32 l3 = sizeof(*eth);
    __u16 vlan = 0;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (proto != bpf_htons(ETH_P_8021Q_) && proto != bpf_htons(ETH_P_8021AD_))
            break;
        struct vlan_tag *tag = data + l3;
        if ((void *)(tag + 1) > end)
            return pass(CNT_PASS_MALFORMED);
        if (i == 0)
            vlan = bpf_ntohs(tag->tci) & 0x0fff;
        proto = tag->proto;
        l3 += sizeof(*tag);
    }
    if (proto != bpf_htons(ETH_P_IP))
        return pass(CNT_PASS_NOT_DHCP);

    struct iphdr *ip = data + l3;
    if ((void *)(ip + 1) > end)
        return pass(CNT_PASS_MALFORMED);
    if (ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3fff)))
        return pass(CNT_PASS_NOT_DHCP);
    if (ip->ihl != 5)
        return pass(CNT_PASS_LAYOUT);  // IPv4 options: the slow path honours IHL in full
    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > end)
        return pass(CNT_PASS_MALFORMED);
    if (udp->dest != bpf_htons(DHCP_SERVER_PORT))
        return pass(CNT_PASS_NOT_DHCP);
    // A truncated datagram (headers claiming more than arrived) is the slow path's to drop.
    if ((void *)ip + bpf_ntohs(ip->tot_len) > end || (void *)udp + bpf_ntohs(udp->len) > end ||
        bpf_ntohs(udp->len) < sizeof(*udp) + sizeof(struct bootp))
        return pass(CNT_PASS_MALFORMED);
    struct bootp *b = (void *)(udp + 1);
    if ((void *)(b + 1) > end)
        return pass(CNT_PASS_MALFORMED);
    if (b->op != 1 || b->htype != 1 || b->hlen != 6 || b->magic != bpf_htonl(DHCP_MAGIC))
        return pass(CNT_PASS_MALFORMED);

    // A bounded walk over the options: 53, 50, 54, 82, and 52 (overload: slow path). What
    // it finds goes straight into the per-CPU scratch state: kept in registers, every
    // combination of options seen would be a separate verifier state at the loop head.
    __u32 zero = 0;
    struct parse_state *st = parse_scratch.lookup(&zero);
    if (!st)
        return pass(CNT_PASS_LAYOUT);
    __builtin_memset(st, 0, sizeof(*st));
    st->l3 = l3;
    st->vlan = vlan;
    __u8 *opts = (void *)(b + 1);
    __u32 off = 0;
    for (int i = 0; i < OPTION_WALK_MAX; i++) {
        if (off > 400)
            return pass(CNT_PASS_LAYOUT);
        __u8 *p = opts + off;
        if ((void *)(p + 1) > end)
            return pass(CNT_PASS_MALFORMED);
        __u8 code = p[0];
        if (code == 255)
            goto walked;
        if (code == 0) {
            off += 1;
            continue;
        }
        if ((void *)(p + 2) > end)
            return pass(CNT_PASS_MALFORMED);
        __u8 len = p[1];
        // An option running past the end is caught by the next turn's check (or the END
        // search), without a variable-length check here that splits the verifier's states.
        // Constant-size checks before each read: the verifier cannot use `len` above.
        if (code == 53 && len == 1) {
            if ((void *)(p + 3) > end)
                return pass(CNT_PASS_MALFORMED);
            st->msg_type = p[2];
        } else if (code == 50 && len == 4) {
            if ((void *)(p + 6) > end)
                return pass(CNT_PASS_MALFORMED);
            __builtin_memcpy(&st->requested, p + 2, 4);
        } else if (code == 54 && len == 4) {
            if ((void *)(p + 6) > end)
                return pass(CNT_PASS_MALFORMED);
            __builtin_memcpy(&st->server_id, p + 2, 4);
        } else if (code == 52) {
            return pass(CNT_PASS_LAYOUT);  // option overload
        } else if (code == 82) {
            st->off82 = off;
            st->len82 = len;
        }
        off += 2 + len;
    }
    return pass(CNT_PASS_LAYOUT);  // more options than the walk looks at
walked:
    if (st->msg_type != 1 && st->msg_type != 3)
        return pass(CNT_PASS_OTHER_TYPE);  // RELEASE, DECLINE, INFORM: the slow path
    return reply(ctx, st);
}

// Build the reply for a request the walk above accepted. Everything is re-read from the
// scratch state and the packet, so the verifier checks this part once, not once per path.
static __always_inline int reply(struct xdp_md *ctx, struct parse_state *st)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u32 l3 = st->l3;
    if (l3 > 22)
        return pass(CNT_PASS_LAYOUT);
    __u8 msg_type = st->msg_type;
    __be32 requested = st->requested, server_id = st->server_id;
    __u32 off82 = st->off82, len82 = st->len82;
    if (off82 > 400 || len82 > MAX_RELAY_AGENT_LEN)
        return pass(CNT_PASS_LAYOUT);
    struct ethhdr *eth = data;
    struct iphdr *ip = data + l3;
    struct udphdr *udp = (void *)(ip + 1);
    struct bootp *b = (void *)(udp + 1);
    __u8 *opts = (void *)(b + 1);
    if ((void *)(b + 1) > end || (void *)(eth + 1) > end)
        return pass(CNT_PASS_MALFORMED);
    __u16 vlan = st->vlan;

    struct subscriber_key key = {};
    __builtin_memcpy(key.mac, b->chaddr, 6);
    key.vlan = vlan;
    struct subscriber_lease *lease = subscribers.lookup(&key);
    if (!lease)
        return pass(CNT_PASS_MISS);
    __u64 now = bpf_ktime_get_boot_ns();
    if (lease->expires_ns <= now)
        return pass(CNT_PASS_EXPIRED);
    if (msg_type == 3) {
        __be32 want = b->ciaddr ? b->ciaddr : requested;
        // A wrong address or another server's id: the slow path NAKs or lets go.
        if (want != lease->address || (server_id && server_id != lease->server_id))
            return pass(CNT_PASS_WRONG_ADDRESS);
    }
    __u32 ifindex = ctx->ingress_ifindex;
    struct interface_config *ifc = interfaces.lookup(&ifindex);
    if (!ifc)
        return pass(CNT_PASS_NO_INTERFACE);
    __u32 pool = lease->pool;
    struct pool_option_set *po = pool_options.lookup(&pool);
    if (!po)
        return pass(CNT_PASS_MISS);

    // Options 53, 54, 51, 58, 59, 1, 3, 6, then 82 echoed verbatim, then END: assembled on
    // the stack while the request is still intact, copied into the reply at the end. Every
    // option sits at a fixed offset; unused room is PAD (0), which clients skip:
    //   0..38 fixed options | 39..48 option 6 (one or two servers) | 56..119 option 82 | 127 END
    __u8 ob[REPLY_OPTIONS_LEN] __attribute__((aligned(8))) = {};
    __u8 ra[72] __attribute__((aligned(8))) = {};
    __be32 sid = lease->server_id, address = lease->address;
    __u32 lease_s = lease->lease_seconds, dns_count = po->dns_count;
    ob[0] = 53; ob[1] = 1; ob[2] = msg_type == 1 ? 2 : 5;
    ob[3] = 54; ob[4] = 4; __builtin_memcpy(ob + 5, &sid, 4);
    ob[9] = 51; ob[10] = 4; put32(ob + 11, lease_s);
    ob[15] = 58; ob[16] = 4; put32(ob + 17, lease_s / 2);
    ob[21] = 59; ob[22] = 4; put32(ob + 23, (__u32)((__u64)lease_s * 7 / 8));
    ob[27] = 1; ob[28] = 4; __builtin_memcpy(ob + 29, &po->subnet_mask, 4);
    ob[33] = 3; ob[34] = 4; __builtin_memcpy(ob + 35, &po->router, 4);
    if (dns_count >= 1) {
        ob[39] = 6;
        ob[40] = dns_count >= 2 ? 8 : 4;
        __builtin_memcpy(ob + 41, &po->dns[0], 4);
        if (dns_count >= 2)
            __builtin_memcpy(ob + 45, &po->dns[1], 4);
    }
    if (len82) {
        ra[0] = 82;
        ra[1] = len82;
        // len82 <= MAX_RELAY_AGENT_LEN was checked above; the mask, hidden from clang in asm,
        // is what lets the verifier see the bound. One helper call instead of a byte loop,
        // which multiplied the verifier's states past its limit.
        // It reads one byte more than the option (never zero bytes, as the helper needs);
        // the walk above saw END after option 82, so that byte exists. It is zeroed after.
        __u32 n = len82;
        asm volatile("%0 &= 63" : "+r"(n));
        __u32 at = l3 + sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(struct bootp) +
                   off82 + 2;
        if (bpf_xdp_load_bytes(ctx, at, ra + 2, n + 1))
            return pass(CNT_PASS_MALFORMED);
        ra[2 + n] = 0;
#pragma unroll
        for (int i = 0; i < 8; i++)
            *(__u64 *)(ob + 56 + i * 8) = *(__u64 *)(ra + i * 8);
    }
    ob[REPLY_OPTIONS_LEN - 1] = 255;

    __u8 src_mac[6], chaddr[6], if_mac[6];
    __builtin_memcpy(src_mac, eth->h_source, 6);
    __builtin_memcpy(chaddr, b->chaddr, 6);
    __builtin_memcpy(if_mac, ifc->mac, 6);
    __be32 giaddr = b->giaddr, ciaddr = b->ciaddr;
    __be16 flags = b->flags;
    if (msg_type == 3)  // the ACK renews the lease; userspace persists the new expiry
        __sync_lock_test_and_set(&lease->expires_ns, now + (__u64)lease_s * 1000000000ULL);

    // RFC 2131 §4.1: to the relay, else to ciaddr, else broadcast when asked, else unicast.
    __u8 reply_type = ob[2];
    __be32 dst_ip;
    __u8 dst_mac[6];
    __be16 dport = bpf_htons(DHCP_CLIENT_PORT);
    if (giaddr) {
        dst_ip = giaddr;
        __builtin_memcpy(dst_mac, src_mac, 6);
        dport = bpf_htons(DHCP_SERVER_PORT);
    } else if (ciaddr) {
        dst_ip = ciaddr;
        __builtin_memcpy(dst_mac, src_mac, 6);
    } else if (flags & bpf_htons(0x8000)) {
        dst_ip = 0xffffffff;
        __builtin_memset(dst_mac, 0xff, 6);
    } else {
        dst_ip = address;
        __builtin_memcpy(dst_mac, chaddr, 6);
    }

    // Resize to the reply and check the whole of it once.
    int delta = (int)(l3 + sizeof(struct iphdr) + sizeof(struct udphdr) + REPLY_DHCP_LEN) -
                (int)(end - data);
    if (bpf_xdp_adjust_tail(ctx, delta))
        return pass(CNT_PASS_LAYOUT);
    data = (void *)(long)ctx->data;
    end = (void *)(long)ctx->data_end;
    if (l3 > 22)
        return XDP_ABORTED;
    eth = data;
    ip = data + l3;
    if ((void *)ip + sizeof(struct iphdr) + sizeof(struct udphdr) + REPLY_DHCP_LEN > end ||
        (void *)(eth + 1) > end) {
        count(CNT_DROP);
        return XDP_DROP;  // cannot happen after a successful resize; never send half a reply
    }
    udp = (void *)(ip + 1);
    b = (void *)(udp + 1);
    opts = (void *)(b + 1);

    __builtin_memcpy(eth->h_dest, dst_mac, 6);
    __builtin_memcpy(eth->h_source, if_mac, 6);  // VLAN tags stay as they came in

    ip->version = 4;
    ip->ihl = 5;
    ip->tos = 0;
    ip->tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct udphdr) + REPLY_DHCP_LEN);
    ip->id = 0;
    ip->frag_off = 0;
    ip->ttl = 64;
    ip->protocol = IPPROTO_UDP;
    ip->check = 0;
    ip->saddr = sid;
    ip->daddr = dst_ip;
    ip->check = fold(bpf_csum_diff(0, 0, (void *)ip, sizeof(struct iphdr), 0));

    udp->source = bpf_htons(DHCP_SERVER_PORT);
    udp->dest = dport;
    udp->len = bpf_htons(sizeof(struct udphdr) + REPLY_DHCP_LEN);
    udp->check = 0;

    // In place: xid, flags, giaddr, chaddr and the magic cookie are already the request's.
    b->op = 2;
    b->hops = 0;
    b->secs = 0;
    b->ciaddr = msg_type == 3 ? ciaddr : 0;
    b->yiaddr = address;
    b->siaddr = 0;
    zero(b->sname, sizeof(b->sname) + sizeof(b->file));

#pragma unroll
    for (int i = 0; i < REPLY_OPTIONS_LEN / 8; i++)
        *(__u64 *)(opts + i * 8) = *(__u64 *)(ob + i * 8);

    __u64 sum = bpf_csum_diff(0, 0, (void *)udp, sizeof(struct udphdr) + REPLY_DHCP_LEN, 0);
    sum += (sid & 0xffff) + (sid >> 16) + (dst_ip & 0xffff) + (dst_ip >> 16);
    sum += bpf_htons(IPPROTO_UDP) + bpf_htons(sizeof(struct udphdr) + REPLY_DHCP_LEN);
    __u16 csum = fold(sum);
    udp->check = csum ? csum : 0xffff;

    count(reply_type == 2 ? CNT_OFFER : CNT_ACK);
    return XDP_TX;
}

// XDP on the access interface: answer DHCP from known subscribers in the kernel.
//
// A DISCOVER or REQUEST from a subscriber with a valid lease in the `subscribers` map is
// turned into its OFFER or ACK in place and sent back with XDP_TX. Everything else goes to
// the slow path (XDP_PASS), counted by reason. The reply carries the slow path's options in
// its order, packed, at least 300 bytes of DHCP (RFC 1542).
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
};  // not packed: every field is naturally aligned, and packed would make each access bytes
_Static_assert(sizeof(struct bootp) == BOOTP_FIXED + 4, "struct bootp");

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

// Word access at any byte offset, one instruction each: the verifier allows unaligned
// access to packet and map memory (no strict alignment on x86 or arm64), where
// __builtin_memcpy would assume alignment 1 and move every word a byte at a time.
static __always_inline __u64 load64(const void *p)
{
    return *(const __u64 *)p;
}

static __always_inline __u32 load32(const void *p)
{
    return *(const __u32 *)p;
}

static __always_inline void store64(void *p, __u64 v)
{
    *(__u64 *)p = v;
}

// An option with a 4-byte value (code, 4, value) in two stores; memory is little-endian.
static __always_inline void put_option4(__u8 *p, __u8 code, __be32 value)
{
    *(__u16 *)p = code | 4 << 8;
    *(__u32 *)(p + 2) = value;
}

// A MAC address: 6 bytes as a 4- and a 2-byte word.
static __always_inline void copy_mac(void *dst, const void *src)
{
    *(__u32 *)dst = *(const __u32 *)src;
    *(__u16 *)(dst + 4) = *(const __u16 *)(src + 4);
}

static __always_inline int reply(struct xdp_md *ctx, struct parse_state *st);

// The request's n (1..OPTIONS_COPY) option bytes at packet offset `at` into st->opts: whole
// words, then the last word again ending at n (overlapping), so with no helper call
// (bpf_xdp_load_bytes is one, ~20 ns with return thunks). A list under a word takes the
// helper. Non-zero: the packet ends before the options do.
static __always_inline int copy_options(struct xdp_md *ctx, struct parse_state *st, __u32 at,
                                        __u32 n)
{
    if (n < 8) {
        n &= 7;  // the bounds the helper's verifier check needs, on its own register
        return n ? bpf_xdp_load_bytes(ctx, at, st->opts, n) : -1;
    }
    __u8 *src = (void *)(long)ctx->data + at;
    void *end = (void *)(long)ctx->data_end;
#pragma unroll
    for (int w = 0; w < OPTIONS_COPY / 8; w++) {
        if (w * 8 + 8 > n)
            break;
        if ((void *)(src + w * 8 + 8) > end)
            return -1;
        store64(st->opts + w * 8, load64(src + w * 8));
    }
    __u32 last = (n - 8) & (OPTIONS_COPY - 1);
    if ((void *)(src + last + 8) > end)
        return -1;
    store64(st->opts + last, load64(src + last));
    return 0;
}

// The whole fast path; xdp_dhcp (at the end) is the program, bench/xdp_cost.c wraps it too.
static __always_inline int handle(struct xdp_md *ctx)
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

    // Copy the options once into the per-CPU scratch state, then walk the copy. Offsets into
    // it are masked, so the walk needs no packet-end check per option, and every path reaches
    // the reply code in one verifier state (map memory contents are not tracked).
    __u32 zero = 0;
    struct parse_state *st = parse_scratch.lookup(&zero);
    if (!st)
        return pass(CNT_PASS_LAYOUT);
    st->l3 = l3;
    st->vlan = vlan;
    st->msg_type = 0;
    st->seen = 0;
    st->requested = st->server_id = 0;
    st->off82 = st->len82 = st->off61 = st->len61 = 0;
    __u32 avail = bpf_ntohs(udp->len) - sizeof(*udp) - sizeof(struct bootp);
    __u32 n = avail;
    if (n > OPTIONS_COPY)
        n = OPTIONS_COPY;
    if (n < 1)
        return pass(CNT_PASS_MALFORMED);  // no END
    __u32 at = l3 + sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(struct bootp);
    // 1..OPTIONS_COPY on the one register the copy and the walk use: with both bounds there,
    // the verifier explores about half as many instructions.
    n -= 1;
    asm volatile("%0 &= %1" : "+r"(n) : "i"(OPTIONS_COPY - 1));
    n += 1;
    if (copy_options(ctx, st, at, n))
        return pass(CNT_PASS_MALFORMED);
    // Running out of copied bytes means a malformed list, unless the copy was cut short.
    int short_reason = avail > OPTIONS_COPY ? CNT_PASS_LAYOUT : CNT_PASS_MALFORMED;

    // The walk leaves by `break` with a reason, so that the loop holds no call (pass()
    // is one to the compiler) and its values can stay in registers; 64-bit offsets need no
    // zero-extension at each use.
    __u64 off = 0, end_off = n;
    int reason = CNT_PASS_LAYOUT;  // more options than the walk looks at
    for (int i = 0; i < OPTION_WALK_MAX; i++) {
        if (off >= end_off) {
            reason = short_reason;
            break;
        }
        __u8 code = st->opts[off & (OPTIONS_COPY - 1)];
        if (code == 255)
            goto walked;
        if (code == 0) {
            off += 1;
            continue;
        }
        if (off + 1 >= end_off) {
            reason = short_reason;
            break;
        }
        __u64 len = st->opts[(off + 1) & (OPTIONS_COPY - 1)];
        __u64 v = (off + 2) & (OPTIONS_COPY - 1);
        if (off + 2 + len > end_off) {
            reason = short_reason;
            break;
        }
        // The options the fast path reads, each at most once: a repeated one (RFC 3396
        // concatenation) is the slow path's.
        __u8 bit = code == 53 ? 1 : code == 50 ? 2 : code == 54 ? 4 : code == 61 ? 8 :
                   code == 82 ? 16 : 0;
        if ((st->seen & bit) || code == 52)  // 52: option overload
            break;
        st->seen |= bit;
        if (code == 53 && len == 1) {
            st->msg_type = st->opts[v];
        } else if (code == 50 && len == 4) {
            st->requested = load32(st->opts + v);
        } else if (code == 54 && len == 4) {
            st->server_id = load32(st->opts + v);
        } else if (code == 61) {
            st->off61 = off;
            st->len61 = len;
        } else if (code == 82) {
            st->off82 = off;
            st->len82 = len;
        }
        off += 2 + len;
    }
    return pass(reason);
walked:
    if (st->msg_type != 1 && st->msg_type != 3)
        return pass(CNT_PASS_OTHER_TYPE);  // RELEASE, DECLINE, INFORM: the slow path
    return reply(ctx, st);
}

// Copy `words` 8-byte words of scratch memory at a masked offset, keeping the first `keep`
// bytes and zeroing the rest (byte order in memory is the wire's, little-endian words).
static __always_inline void copy_prefix(__u8 *dst, const __u8 *src, const int words, __u32 keep)
{
#pragma unroll
    for (int w = 0; w < words; w++) {
        __u64 x = load64(src + w * 8);
        if (keep <= w * 8)
            x = 0;
        else if (keep < w * 8 + 8)
            x &= (1ULL << ((keep - w * 8) * 8)) - 1;
        store64(dst + w * 8, x);
    }
}

static __always_inline int same(const __u8 *a, const __u8 *b, const int words)
{
    __u64 diff = 0;
#pragma unroll
    for (int w = 0; w < words; w++)
        diff |= *(__u64 *)(a + w * 8) ^ *(__u64 *)(b + w * 8);
    return diff == 0;
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
    __u32 len82 = st->len82, len61 = st->len61;
    if (len82 > MAX_RELAY_AGENT_LEN)
        return pass(CNT_PASS_LAYOUT);
    struct ethhdr *eth = data;
    struct iphdr *ip = data + l3;
    struct udphdr *udp = (void *)(ip + 1);
    struct bootp *b = (void *)(udp + 1);
    if ((void *)(b + 1) > end || (void *)(eth + 1) > end)
        return pass(CNT_PASS_MALFORMED);
    __u16 vlan = st->vlan;

    // Option 82 as it came (code, length, value), zero-padded: the circuit key, the check
    // against the lease, and the echo are all this one buffer.
    __u8 relay[MAX_RELAY_AGENT_LEN + 2] __attribute__((aligned(8))) = {};
    if (len82)
        copy_prefix(relay, st->opts + (st->off82 & (OPTIONS_COPY - 1)), 8, len82 + 2);
    struct subscriber_lease *lease = NULL;
    if (len82) {
        struct circuit_key ck = {.hash = circuit_hash(relay), .vlan = vlan};
        lease = circuits.lookup(&ck);
        if (lease && !same(relay, lease->relay, sizeof(relay) / 8))
            lease = NULL;  // another line with the same hash: not this one's lease
    }
    if (!lease) {
        struct subscriber_key key __attribute__((aligned(8))) = {};
        copy_mac(key.mac, b->chaddr);
        key.vlan = vlan;
        lease = subscribers.lookup(&key);
        if (!lease)
            return pass(CNT_PASS_MISS);
        // Keyed by the CPE: its client id and the line it is on must be as when granted.
        if (len61 != lease->client_id_len || len61 > MAX_CLIENT_ID_LEN ||
            !same(relay, lease->relay, sizeof(relay) / 8))
            return pass(CNT_PASS_CHANGED);
        __u8 cid[MAX_CLIENT_ID_LEN] __attribute__((aligned(8))) = {};
        if (len61)
            copy_prefix(cid, st->opts + ((st->off61 + 2) & (OPTIONS_COPY - 1)), 4, len61);
        if (!same(cid, lease->client_id, MAX_CLIENT_ID_LEN / 8))
            return pass(CNT_PASS_CHANGED);
    }
    if (b->giaddr && b->giaddr != lease->giaddr)
        return pass(CNT_PASS_CHANGED);  // another relay: maybe another link and subnet
    // Jiffies: the verifier inlines bpf_jiffies64() into one load, where any clock helper
    // is a call (~15 ns here). A lease may so be answered up to one tick (1-10 ms) past
    // its expiry.
    __u64 now = bpf_jiffies64();
    if (lease->expires <= now)
        return pass(CNT_PASS_EXPIRED);
    if (msg_type == 3) {
        __be32 want = b->ciaddr ? b->ciaddr : requested;
        // A wrong address or another server's id: the slow path NAKs or lets go.
        if (want != lease->address || (server_id && server_id != lease->server_id))
            return pass(CNT_PASS_WRONG_ADDRESS);
    }
    __u32 ifindex = ctx->ingress_ifindex;
    struct interface_config *ifc = NULL;
#pragma unroll
    for (int i = 0; i < INTERFACE_PROBES; i++) {
        __u32 slot = (ifindex + i) % INTERFACE_SLOTS;
        struct interface_config *c = interfaces.lookup(&slot);
        if (c && c->ifindex == ifindex) {
            ifc = c;
            break;
        }
    }
    if (!ifc)
        return pass(CNT_PASS_NO_INTERFACE);
    __u32 slot = lease->subnet_slot;
    struct subnet_options *so = subnet_options.lookup(&slot);
    if (!so || so->network != lease->subnet)
        return pass(CNT_PASS_NO_SUBNET);

    // Options 53, 54, 51, 58, 59, 1, 3, 28, 6, 15, then 82 echoed verbatim, then END: the
    // slow path's order, packed, assembled in the scratch map while the request is intact.
    // Every write past an option's end writes zeros (PAD), so the tail stays clean.
    __u8 *ob = st->reply;
    zero(ob, REPLY_OPTIONS_LEN);
    __be32 sid = lease->server_id, address = lease->address;
    __u32 lease_s = lease->lease_seconds;
    __u32 dns_count = so->dns_count, domain_len = so->domain_len;
    ob[0] = 53; ob[1] = 1; ob[2] = msg_type == 1 ? 2 : 5;
    put_option4(ob + 3, 54, sid);
    put_option4(ob + 9, 51, bpf_htonl(lease_s));
    put_option4(ob + 15, 58, bpf_htonl(lease_s / 2));
    put_option4(ob + 21, 59, bpf_htonl((__u32)((__u64)lease_s * 7 / 8)));
    put_option4(ob + 27, 1, so->subnet_mask);
    put_option4(ob + 33, 3, so->router);
    put_option4(ob + 39, 28, so->broadcast);
    __u32 pos = 45;
    if (dns_count > MAX_DNS)
        dns_count = MAX_DNS;
    if (dns_count) {
        ob[45] = 6;
        ob[46] = dns_count * 4;
#pragma unroll
        for (int w = 0; w < MAX_DNS / 2; w++)  // unused slots are zero
            store64(ob + 47 + w * 8, load64(so->dns + w * 2));
        pos += 2 + dns_count * 4;
    }
    if (domain_len > MAX_DOMAIN_LEN)
        domain_len = 0;
    if (domain_len) {
        ob[pos] = 15;
        ob[pos + 1] = domain_len;
#pragma unroll
        for (int w = 0; w < MAX_DOMAIN_LEN / 8; w++)  // zero-padded
            store64(ob + pos + 2 + w * 8, load64(so->domain + w * 8));
        pos += 2 + domain_len;
    }
    if (len82) {
#pragma unroll
        for (int w = 0; w < sizeof(relay) / 8; w++)  // zero-padded
            store64(ob + pos + w * 8, load64(relay + w * 8));
        pos += 2 + len82;
    }
    ob[pos] = 255;
    // At least 300 bytes of DHCP (RFC 1542), in whole 8-byte words (the copy below).
    __u32 opts_len = (pos + 1 + 7) & ~7U;
    if (opts_len < MIN_REPLY_OPTIONS_LEN)
        opts_len = MIN_REPLY_OPTIONS_LEN;
    if (opts_len > REPLY_OPTIONS_LEN)
        return pass(CNT_PASS_LAYOUT);  // cannot happen with the bounds above
    __u32 dhcp_len = BOOTP_FIXED + 4 + opts_len;

    // Aligned, so that copy_mac's word accesses to the stack are too (the verifier insists).
    __u8 src_mac[8] __attribute__((aligned(8))), chaddr[8] __attribute__((aligned(8)));
    __u8 if_mac[8] __attribute__((aligned(8))), dst_mac[8] __attribute__((aligned(8)));
    copy_mac(src_mac, eth->h_source);
    copy_mac(chaddr, b->chaddr);
    copy_mac(if_mac, ifc->mac);
    __be32 giaddr = b->giaddr, ciaddr = b->ciaddr;
    __be16 flags = b->flags;

    // RFC 2131 §4.1: to the relay, else to ciaddr, else broadcast when asked, else unicast.
    __u8 reply_type = ob[2];
    __be32 dst_ip;
    __be16 dport = bpf_htons(DHCP_CLIENT_PORT);
    if (giaddr) {
        dst_ip = giaddr;
        copy_mac(dst_mac, src_mac);
        dport = bpf_htons(DHCP_SERVER_PORT);
    } else if (ciaddr) {
        dst_ip = ciaddr;
        copy_mac(dst_mac, src_mac);
    } else if (flags & bpf_htons(0x8000)) {
        dst_ip = 0xffffffff;
        __builtin_memset(dst_mac, 0xff, 6);
    } else {
        dst_ip = address;
        copy_mac(dst_mac, chaddr);
    }

    // Resize to the reply. A buffer without the tailroom (veth hands XDP small skb heads)
    // goes to the slow path, counted.
    int delta = (int)(l3 + sizeof(struct iphdr) + sizeof(struct udphdr) + dhcp_len) -
                (int)(end - data);
    if (bpf_xdp_adjust_tail(ctx, delta))
        return pass(CNT_PASS_NO_ROOM);
    if (msg_type == 3) {
        // The ACK renews the lease; the agent persists the new expiry from the log.
        __u64 expires = now + lease->lease_jiffies;
        // One aligned 8-byte store: a reader sees the old or the new expiry, never a mix.
        *(volatile __u64 *)&lease->expires = expires;
        __u32 cpu = bpf_get_smp_processor_id();  // inlined, as are the array lookups
        struct refresh_log_head *log = refresh_heads.lookup(&cpu);
        __u64 head = log ? log->head : 0;
        __u32 slot = cpu * REFRESH_LOG_LEN + (head & (REFRESH_LOG_LEN - 1));
        struct lease_refresh *ev = refresh_log.lookup(&slot);
        if (log && ev) {
            ev->address = address;
            ev->clock = REFRESH_CLOCK_JIFFIES;
            ev->expires = expires;
            asm volatile("" ::: "memory");  // the entry before the head that publishes it
            *(volatile __u64 *)&log->head = head + 1;
        } else {
            count(CNT_REFRESH_LOST);
        }
    }
    data = (void *)(long)ctx->data;
    end = (void *)(long)ctx->data_end;
    if (l3 > 22)
        return XDP_ABORTED;
    eth = data;
    ip = data + l3;
    if ((void *)ip + sizeof(struct iphdr) + sizeof(struct udphdr) + BOOTP_FIXED + 4 > end ||
        (void *)(eth + 1) > end) {
        count(CNT_DROP);
        return XDP_DROP;  // cannot happen after a successful resize; never send half a reply
    }
    udp = (void *)(ip + 1);
    b = (void *)(udp + 1);

    copy_mac(eth->h_dest, dst_mac);
    copy_mac(eth->h_source, if_mac);  // VLAN tags stay as they came in

    ip->version = 4;
    ip->ihl = 5;
    ip->tos = 0;
    __be16 tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct udphdr) + dhcp_len);
    __be16 udp_len = bpf_htons(sizeof(struct udphdr) + dhcp_len);
    // Both addresses, as 16-bit words in wire order: in the IP and the UDP checksum.
    __u64 addr_sum = (sid & 0xffff) + (sid >> 16) + (dst_ip & 0xffff) + (dst_ip >> 16);
    ip->tot_len = tot_len;
    ip->id = 0;
    ip->frag_off = 0;
    ip->ttl = 64;
    ip->protocol = IPPROTO_UDP;
    ip->saddr = sid;
    ip->daddr = dst_ip;
    // The header's checksum from the values just written (id and frag_off are zero), in
    // the header's own byte order: no helper call.
    ip->check = fold((__u64)bpf_htons(0x4500) + tot_len + bpf_htons(64 << 8 | IPPROTO_UDP) +
                     addr_sum);

    udp->source = bpf_htons(DHCP_SERVER_PORT);
    udp->dest = dport;
    udp->len = udp_len;
    udp->check = 0;

    // In place: xid, flags, giaddr, chaddr and the magic cookie are already the request's.
    b->op = 2;
    b->hops = 0;
    b->secs = 0;
    b->ciaddr = msg_type == 3 ? ciaddr : 0;
    b->yiaddr = address;
    b->siaddr = 0;
    zero(b->sname, sizeof(b->sname) + sizeof(b->file));

    // The options, copied from the scratch copy, and the UDP checksum, summed in the
    // program: the helpers (bpf_xdp_store_bytes, bpf_csum_diff) cost a call each, ~15 ns
    // with return thunks. The sum is of 16-bit words in memory order (RFC 1071 §2(B)), of
    // everything that is not zero: the pseudo header, the UDP header, the fixed fields up
    // to chaddr, the magic cookie and the options (sname, file and PAD add nothing).
    __u8 *o = (void *)(b + 1);
    __u64 sum = 0;
#pragma unroll
    for (int w = 0; w < REPLY_OPTIONS_LEN / 8; w++) {
        if ((void *)(o + w * 8 + 8) > end)
            break;  // the frame ends at the options' end (the resize above)
        __u64 x = load64(ob + w * 8);
        store64(o + w * 8, x);
        sum += (x & 0xffffffff) + (x >> 32);
    }
    __u32 *hw = (__u32 *)b;  // op..hops, xid: as written / as they came
    __u32 *cw = (__u32 *)b->chaddr;
    sum += (__u64)hw[0] + hw[1] + flags + b->ciaddr + address + giaddr +  // 64-bit: carries
           cw[0] + cw[1] + cw[2] + cw[3] + bpf_htonl(DHCP_MAGIC);
    sum += bpf_htons(DHCP_SERVER_PORT) + dport + udp_len;        // UDP header, check 0
    sum += addr_sum + bpf_htons(IPPROTO_UDP) + udp_len;          // pseudo header
    __u16 csum = fold(sum);
    udp->check = csum ? csum : 0xffff;

    count(reply_type == 2 ? CNT_OFFER : CNT_ACK);
    return XDP_TX;
}

int xdp_dhcp(struct xdp_md *ctx)
{
    return handle(ctx);
}

// Run by the agent (BPF_PROG_RUN), never attached: the clock the program reads, beside
// CLOCK_MONOTONIC, so that expiries can be turned into wall time and back.
int clock_now(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct clock_sample *c = clock_sample.lookup(&zero);
    if (c) {
        c->jiffies = bpf_jiffies64();
        c->monotonic_ns = bpf_ktime_get_ns();
    }
    return XDP_PASS;
}

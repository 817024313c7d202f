// XDP on the access interface (access ingress): answer DHCP from known subscribers in the
// kernel. ARP goes on to the access data path (lib/access.h: a tail call into
// access_qos.c); the rest of the subscribers' traffic meets it at tc ingress.
//
// A DISCOVER or REQUEST from a subscriber with a valid lease in the `subscribers` map is
// turned into its OFFER or ACK in place and sent back with XDP_TX. Everything else goes to
// the slow path (XDP_PASS), counted by reason. The reply carries the slow path's options in
// its order, packed, at least 300 bytes of DHCP (RFC 1542).
//
// BCC rewrites map calls in this file only: the functions that look maps up live here, and
// the pure parts of the reply in lib/dhcp_reply.h.
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#include "lib/maps.h"
#include "lib/access.h"
#include "lib/dhcp_reply.h"
#include "lib/flow.h"

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8

struct vlan_tag {
    __be16 tci;
    __be16 proto;
};

static __always_inline void count(int idx)
{
    __u64 *c = counters.lookup(&idx);
    if (c)
        *c += 1;
}

// A request left to the slow path, counted by its reason. The reason is also kept for the
// flow event: a reply's and a drop's follow from the verdict, so the reply path, the one
// that must stay cheap, writes nothing for events.
static __always_inline void count_pass(int idx)
{
    count(idx);
#if FLOW_EVENTS
    __u32 zero = 0;
    __u32 *why = flow_outcome.lookup(&zero);
    if (why)
        *why = idx;
#endif
}

static __always_inline int pass(int idx)
{
    count_pass(idx);
    return XDP_PASS;
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
    if (proto != bpf_htons(ETH_P_IP)) {
        // ARP is the access data path's (answered there for the session's gateway, on its
        // tags); the call returns only when no program is in the slot.
        if (proto == bpf_htons(ETH_P_ARP))
            access_next.call(ctx, ACCESS_NEXT_ARP);
        return pass(CNT_PASS_NOT_DHCP);
    }

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

// The lease a request is answered from: by its line (option 82, hashed, then compared in
// full) or else by its CPE (MAC and VLAN, with the client id and option 82 it was granted
// on). NULL, counted with the reason, when there is none. One exit for both lookups: with
// an early return for the line's lease, the verifier explored 1.7 times as many states
// (633,960 against 369,263).
static __always_inline struct subscriber_lease *find_lease(struct parse_state *st,
                                                           const struct bootp *b,
                                                           const __u8 *relay, __u32 len82,
                                                           __u16 vlan)
{
    struct subscriber_lease *lease = NULL;
    if (len82) {
        struct circuit_key ck = {.hash = circuit_hash(relay), .vlan = vlan};
        lease = circuits.lookup(&ck);
        if (lease && !same(relay, lease->relay, (MAX_RELAY_AGENT_LEN + 2) / 8))
            lease = NULL;  // another line with the same hash: not this one's lease
    }
    if (!lease) {
        struct subscriber_key key __attribute__((aligned(8))) = {};
        copy_mac(key.mac, b->chaddr);
        key.vlan = vlan;
        lease = subscribers.lookup(&key);
        if (!lease) {
            count_pass(CNT_PASS_MISS);
            return NULL;
        }
        // Keyed by the CPE: its client id and the line it is on must be as when granted.
        __u32 len61 = st->len61;
        if (len61 != lease->client_id_len || len61 > MAX_CLIENT_ID_LEN ||
            !same(relay, lease->relay, (MAX_RELAY_AGENT_LEN + 2) / 8)) {
            count_pass(CNT_PASS_CHANGED);
            return NULL;
        }
        __u8 cid[MAX_CLIENT_ID_LEN] __attribute__((aligned(8))) = {};
        if (len61)
            copy_prefix(cid, st->opts + ((st->off61 + 2) & (OPTIONS_COPY - 1)), 4, len61);
        if (!same(cid, lease->client_id, MAX_CLIENT_ID_LEN / 8)) {
            count_pass(CNT_PASS_CHANGED);
            return NULL;
        }
    }
    return lease;
}

// The receiving interface's slot (its MAC), probed from ifindex.
static __always_inline struct interface_config *find_interface(__u32 ifindex)
{
#pragma unroll
    for (int i = 0; i < INTERFACE_PROBES; i++) {
        __u32 slot = (ifindex + i) % INTERFACE_SLOTS;
        struct interface_config *c = interfaces.lookup(&slot);
        if (c && c->ifindex == ifindex)
            return c;
    }
    return NULL;
}

// An ACK renews the lease: the new expiry goes into the entry, and into this CPU's refresh
// log, from which the agent persists it, when it moved by a second or more. A client that
// floods REQUESTs so logs one entry a second, not one per request, and cannot push other
// subscribers' entries out of the log. The agent reads the entry's own expiry before it
// ends a lease, so an entry not logged is never a lease lost.
static __always_inline void refresh(struct subscriber_lease *lease, __u64 now, __be32 address)
{
    __u64 before = lease->expires, jiffies = lease->lease_jiffies;
    __u64 expires = now + jiffies;
    // One aligned 8-byte store: a reader sees the old or the new expiry, never a mix.
    *(volatile __u64 *)&lease->expires = expires;
    // A second in jiffies (the agent knows HZ, the program does not); 0 seconds: log all.
    if (expires - before < jiffies / lease->lease_seconds)
        return;
    __u32 cpu = bpf_get_smp_processor_id();  // inlined, as are the array lookups
    struct refresh_log_head *log = refresh_heads.lookup(&cpu);
    __u64 head = log ? log->head : 0;
    __u32 slot = cpulog_slot(cpu, head, REFRESH_LOG_LEN);
    struct lease_refresh *ev = refresh_log.lookup(&slot);
    if (log && ev) {
        ev->address = address;
        ev->clock = REFRESH_CLOCK_JIFFIES;
        ev->expires = expires;
        cpulog_publish(&log->head, head + 1);
    } else {
        count(CNT_REFRESH_LOST);
    }
}

// A reply longer than the request grows the frame at its tail. Where the driver left no
// tailroom (native XDP on veth: ~32 bytes past an unpadded request), it grows at the head
// instead, into XDP's headroom (256 bytes), and the headers and BOOTP's fixed part, which
// the reply keeps, move to the new start; the options after them are written afresh.
// HEAD_KEEP: the longest header (two VLAN tags, IP, UDP), BOOTP's fixed part and the
// cookie, rounded up to whole words: a request shorter than that is left to the slow path.
#define HEAD_KEEP (((22 + 28 + BOOTP_FIXED + 4) + 7) & ~7)
#define HEAD_GROW_MAX 256

static __always_inline int grow_at_head(struct xdp_md *ctx, struct parse_state *st, int delta)
{
    if (delta <= 0 || delta > HEAD_GROW_MAX)
        return -1;
    if (ctx->data_end - ctx->data < HEAD_KEEP || bpf_xdp_adjust_head(ctx, -delta))
        return -1;
    // Through the scratch map's option copy (the reply no longer reads it), with two helper
    // calls: many verifier states reach this point, and a copy in instructions would be
    // checked once for each.
    if (bpf_xdp_load_bytes(ctx, delta, st->opts, HEAD_KEEP) ||
        bpf_xdp_store_bytes(ctx, 0, st->opts, HEAD_KEEP))
        return -2;  // cannot happen: the frame grew by delta and was HEAD_KEEP long
    return 0;
}

// Build the reply for a request the walk above accepted: lookup, options, addressing,
// resize and refresh, headers, checksum. Everything is re-read from the scratch state and
// the packet, so the verifier checks this part once, not once per path.
static __always_inline int reply(struct xdp_md *ctx, struct parse_state *st)
{
    // Jiffies, read once for the heartbeat and the lease's expiry: the verifier inlines
    // bpf_jiffies64() into one load, where any clock helper is a call (~15 ns here). A lease
    // may so be answered up to one tick (1-10 ms) past its expiry.
    __u64 now = bpf_jiffies64();
    // Only while the agent is alive: its heartbeat gives the program authority to answer.
    __u32 first = 0;
    struct agent_heartbeat *hb = heartbeat.lookup(&first);
    if (!hb || now - hb->beat > hb->window)
        return pass(CNT_PASS_NO_AGENT);
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u32 l3 = st->l3;
    if (l3 > 22)
        return pass(CNT_PASS_LAYOUT);
    __u8 msg_type = st->msg_type;
    __u32 len82 = st->len82;
    if (len82 > MAX_RELAY_AGENT_LEN)
        return pass(CNT_PASS_LAYOUT);
    struct ethhdr *eth = data;
    struct iphdr *ip = data + l3;
    struct udphdr *udp = (void *)(ip + 1);
    struct bootp *b = (void *)(udp + 1);
    if ((void *)(b + 1) > end || (void *)(eth + 1) > end)
        return pass(CNT_PASS_MALFORMED);

    // Option 82 as it came (code, length, value), zero-padded: the circuit key, the check
    // against the lease, and the echo are all this one buffer.
    __u8 relay[MAX_RELAY_AGENT_LEN + 2] __attribute__((aligned(8))) = {};
    if (len82)
        copy_prefix(relay, st->opts + (st->off82 & (OPTIONS_COPY - 1)), 8, len82 + 2);
    struct subscriber_lease *lease = find_lease(st, b, relay, len82, st->vlan);
    if (!lease)
        return XDP_PASS;  // counted
    int why = answerable(lease, b, msg_type, st->requested, st->server_id, now);
    if (why)
        return pass(why);
    struct interface_config *ifc = find_interface(ctx->ingress_ifindex);
    if (!ifc)
        return pass(CNT_PASS_NO_INTERFACE);
    // Option 82 is believed only where an access node inserts it; elsewhere (a subscriber's
    // own, or a relay's, which only the slow path checks) the slow path decides.
    if (len82 && !ifc->trust82)
        return pass(CNT_PASS_UNTRUSTED_82);
    __u32 slot = lease->subnet_slot;
    struct subnet_options *so = subnet_options.lookup(&slot);
    if (!so || so->network != lease->subnet)
        return pass(CNT_PASS_NO_SUBNET);

    __u8 reply_type = msg_type == 1 ? 2 : 5;  // OFFER, ACK
    __u32 opts_len = reply_options(st->reply, reply_type, lease, so, relay, len82);
    if (!opts_len)
        return pass(CNT_PASS_LAYOUT);
    __u32 dhcp_len = BOOTP_FIXED + 4 + opts_len;
    __be32 sid = lease->server_id, address = lease->address;

    // Everything the reply needs from the request, before the resize moves the packet.
    __u8 src_mac[8] __attribute__((aligned(8))), chaddr[8] __attribute__((aligned(8)));
    __u8 if_mac[8] __attribute__((aligned(8)));
    copy_mac(src_mac, eth->h_source);
    copy_mac(chaddr, b->chaddr);
    copy_mac(if_mac, ifc->mac);
    __be32 giaddr = b->giaddr, ciaddr = b->ciaddr;
    __be16 flags = b->flags;
    struct reply_to to;
    reply_address(&to, src_mac, chaddr, giaddr, ciaddr, flags, address);

    // Resize to the reply: at the tail, else at the head (see grow_at_head). A buffer
    // with room at neither end goes to the slow path, counted.
    int delta = (int)(l3 + sizeof(struct iphdr) + sizeof(struct udphdr) + dhcp_len) -
                (int)(end - data);
    if (bpf_xdp_adjust_tail(ctx, delta)) {
        int grown = grow_at_head(ctx, st, delta);
        if (grown == -1)
            return pass(CNT_PASS_NO_ROOM);
        if (grown) {
            count(CNT_DROP);
            return XDP_DROP;  // never send half a reply
        }
    }
    if (msg_type == 3)
        refresh(lease, now, address);
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

    copy_mac(eth->h_dest, to.mac);
    copy_mac(eth->h_source, if_mac);  // VLAN tags stay as they came in
    __be16 udp_len = bpf_htons(sizeof(struct udphdr) + dhcp_len);
    __u64 addr_sum = (sid & 0xffff) + (sid >> 16) + (to.ip & 0xffff) + (to.ip >> 16);
    write_ip_udp(ip, udp, sid, to.ip, to.port,
                 bpf_htons(sizeof(struct iphdr) + sizeof(struct udphdr) + dhcp_len), udp_len,
                 addr_sum);
    write_bootp(b, msg_type, ciaddr, address);
    __u64 sum = store_options((void *)(b + 1), st->reply, end);
    udp->check = udp_checksum(b, sum, flags, address, giaddr, to.port, udp_len, addr_sum);

    count(reply_type == 2 ? CNT_OFFER : CNT_ACK);
    return XDP_TX;
}

#if FLOW_EVENTS
// This CPU's next event in the flow log (lib/flow.h), and the head that publishes it.
static __always_inline struct flow_event *flow_next(struct flow_log_head **log)
{
    __u32 cpu = bpf_get_smp_processor_id();  // inlined, as are the array lookups
    *log = flow_heads.lookup(&cpu);
    if (!*log)
        return NULL;
    __u32 slot = cpulog_slot(cpu, (*log)->head, FLOW_LOG_LEN);
    return flow_log.lookup(&slot);
}

// The flow event of a DHCP request: a reply sent (the frame is the reply now), or a pass to
// the slow path or a drop, with the reason counted. Traffic that is not DHCP has none.
static __always_inline void flow_dhcp(struct xdp_md *ctx, int verdict)
{
    __u32 zero = 0;
    struct parse_state *st = parse_scratch.lookup(&zero);
    if (!st)
        return;
    __u32 why = CNT_DROP;  // XDP_DROP, and XDP_ABORTED (cannot happen)
    if (verdict == XDP_TX) {
        why = st->msg_type == 1 ? CNT_OFFER : CNT_ACK;
    } else if (verdict == XDP_PASS) {
        __u32 *passed = flow_outcome.lookup(&zero);
        if (!passed)
            return;
        why = *passed;
    }
    if (why == CNT_PASS_NOT_DHCP || why >= CNT_MAX)
        return;
    // Written in place in the flow log (no copy of an event built on the stack).
    struct flow_log_head *log = NULL;
    struct flow_event *ev = flow_next(&log);
    if (!ev || !log)
        return;
    __builtin_memset(ev, 0, sizeof(*ev));
    flow_head(ev, ctx->ingress_ifindex, FLOW_SRC_DHCP,
              verdict == XDP_TX || verdict == XDP_PASS ? FLOW_FORWARDED : FLOW_DROPPED, why);
    ev->point = verdict == XDP_TX ? FLOW_TO_NETWORK : verdict == XDP_PASS ? FLOW_TO_STACK
                                                                          : FLOW_NONE;
    // The walk's message type is this packet's only once the walk ended (a reason past
    // it); before, it may be the last packet's.
    __u32 walked = why != CNT_PASS_MALFORMED && why != CNT_PASS_LAYOUT;
    ev->dhcp_type = verdict == XDP_TX ? (why == CNT_OFFER ? 2 : 5) : walked ? st->msg_type : 0;
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u32 at = flow_from_frame(data, end, ev);
    struct bootp *b = data + (at & 0xff);
    if (at && (void *)(b + 1) <= end) {
        ev->xid = b->xid;
        ev->dhcp_yiaddr = b->yiaddr;
    }
    cpulog_publish(&log->head, log->head + 1);
}
#endif

// The request handled, and its flow event sent if anyone watches (bench/xdp_cost.c runs
// this too).
static __always_inline int serve(struct xdp_md *ctx)
{
    int verdict = handle(ctx);
#if FLOW_EVENTS
    // Nobody watching: this lookup is all the events cost. Looked up after the request is
    // handled, not before: a branch on it there would have the verifier walk handle() twice.
    __u32 zero = 0;
    struct flow_ctl *fc = flow_ctl.lookup(&zero);
    if (fc && fc->observers)
        flow_dhcp(ctx, verdict);
#endif
    return verdict;
}

int xdp_dhcp(struct xdp_md *ctx)
{
    return serve(ctx);
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

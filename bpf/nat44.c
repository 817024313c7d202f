// NAT44 / CGNAT on the uplink (docs/nat.md): two tc classifiers (direct action), sharing
// the maps of lib/nat.h.
//
//   nat_out  egress: a bound subscriber's packet leaves with its public address and a port
//            of its blocks: the mapping of its inside endpoint (address, port, protocol;
//            not the destination: endpoint-independent), made on its first packet at a
//            random free port of the blocks (RFC 6056). When the blocks are full the packet
//            is dropped, and turned into an ICMP "administratively prohibited" back to the
//            subscriber, at most 10 a second each. ICMP errors about packets that came in
//            get their inner header translated back. To a public endpoint of ours
//            (hairpinning), the packet goes back in on this interface for nat_in.
//   nat_in   ingress: a packet to a public address of ours is translated back by the
//            mapping of its destination endpoint, if the pool's filtering lets its source
//            in. ICMP errors about packets that went out get their inner header
//            translated. Anything else to a public address is dropped: the node never
//            routes it back out.
//
// Checksums are updated incrementally: bpf_l4_csum_replace for the L4 headers the kernel
// may have left to the device (CHECKSUM_PARTIAL, GSO); by hand for the IP header of a
// translated packet, and inside ICMP errors. Headers are read and written directly where
// they lie in the skb's linear part, by the helpers otherwise.
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>

#include "lib/nat.h"
#include "lib/flow.h"

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define TCP_FLAG_FIN_ 0x01
#define TCP_FLAG_SYN_ 0x02
#define TCP_FLAG_RST_ 0x04
#define TCP_FLAG_ACK_ 0x10
#define ERR_E2BIG 7
#define ERR_EEXIST 17
#define NS 1000000000ULL
// skb->cb[0] from nat_new to the nat_out it tail-calls: this packet's mapping was just made.
#define NAT_CB_MADE 0x4e41544dU

enum frag_kind { FRAG_NONE = 0, FRAG_FIRST, FRAG_LATER };

// What parsing found in a packet. Offsets are from the start of the frame.
struct packet {
    __be32 saddr;
    __be32 daddr;
    __u32 l4;              // the L4 header
    __u32 end;             // just past the datagram (its total length)
    __be16 id;
    __be16 ip_check;       // the IP header's checksum as parsed
    __be16 sport;          // TCP/UDP ports; ICMP echo: the identifier, in both
    __be16 dport;
    __u8 proto;
    __u8 frag;             // enum frag_kind
    __u8 tcp_flags;
    __u8 icmp_type;
    __u8 hlen;             // IP header length, options included
    __u8 pad;
};

// The packet an ICMP error quotes.
struct inner {
    __u32 ip;              // its IP header
    __u32 l4;              // its L4 header
    __u32 l4_check_off;    // its L4 checksum; 0: none to update (not quoted, or UDP's 0)
    __be32 saddr;
    __be32 daddr;
    __be16 sport;          // TCP/UDP ports; ICMP echo: the identifier, in both
    __be16 dport;
    __be16 ip_check;
    __be16 l4_check;
    __u8 proto;
    __u8 pad[3];
};

struct l4_words {
    __be16 w[4];
};

static __always_inline void stat(__u32 idx)
{
    __u64 *c = nat_stats.lookup(&idx);
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

// A flow event of the packet in ``skb`` (as it is now: before a translation's rewrite, or
// after it), with what NAT did and, translated, the public endpoint.
static __always_inline void flow_nat(struct __sk_buff *skb, __u8 verdict, __u32 reason,
                                     __be32 xlated_addr, __be16 xlated_port)
{
#if FLOW_EVENTS
    struct flow_event ev = {};
    flow_head(&ev, skb->ifindex, FLOW_SRC_NAT, verdict, reason);
    ev.xlated_addr = xlated_addr;
    ev.xlated_port = xlated_port;
    flow_from_skb(skb, &ev);
    flow_send(&ev);
#endif
}

static __always_inline int drop(struct __sk_buff *skb, __u32 reason)
{
    stat(reason);
    if (observed())
        flow_nat(skb, FLOW_DROPPED, reason, 0, 0);
    return TC_ACT_SHOT;
}

// --- checksums (RFC 1624), on words as they lie in the packet ----------------------------

static __always_inline __u32 diff16(__u32 d, __u16 from, __u16 to)
{
    return d + (__u16)~from + to;
}

static __always_inline __u32 diff32(__u32 d, __u32 from, __u32 to)
{
    return diff16(diff16(d, from & 0xffff, to & 0xffff), from >> 16, to >> 16);
}

static __always_inline __u16 fold(__u64 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return sum;
}

// ``check`` once the words it covers changed by ``d`` (a sum of diff16/diff32).
static __always_inline __u16 csum_apply(__u16 check, __u32 d)
{
    return ~fold((__u64)(__u16)~check + d);
}

// --- parsing -----------------------------------------------------------------------------

static __always_inline int is_icmp_error(__u8 type)
{
    return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
           type == ICMP_PARAMETERPROB || type == ICMP_SOURCE_QUENCH;
}

// ``len`` bytes at ``off``: read from the packet directly when they lie in its linear
// part (a load of a few words instead of a helper call), else by bpf_skb_load_bytes.
// ``len`` is a constant: these are inlined.
#define DIRECT_MAX_OFF 255
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    if (off <= DIRECT_MAX_OFF && data + off + len <= end) {
        __builtin_memcpy(to, data + off, len);
        return 0;
    }
    return bpf_skb_load_bytes(skb, off, to, len);
}

// The same for a write (flags 0: as bpf_skb_store_bytes with none). A program that writes
// directly has the verifier unclone a cloned skb first, as the helper would.
static __always_inline int store(struct __sk_buff *skb, __u32 off, void *from, __u32 len)
{
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    if (off <= DIRECT_MAX_OFF && data + off + len <= end) {
        __builtin_memcpy(data + off, from, len);
        return 0;
    }
    return bpf_skb_store_bytes(skb, off, from, len, 0);
}

// Returns 0, or the stat of a packet that cannot be translated.
static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
    struct iphdr ip;
    if (load(skb, ETH_HLEN, &ip, sizeof(ip)))
        return NAT_MALFORMED;
    if (ip.version != 4 || ip.ihl < 5)
        return NAT_MALFORMED;
    __u32 hlen = ip.ihl * 4;
    __u32 tot = bpf_ntohs(ip.tot_len);
    if (tot == 0 && skb->gso_size)  // BIG TCP: the length is the skb's
        tot = skb->len - ETH_HLEN;
    if (tot < hlen || ETH_HLEN + tot > skb->len)
        return NAT_MALFORMED;
    p->saddr = ip.saddr;
    p->daddr = ip.daddr;
    p->proto = ip.protocol;
    p->id = ip.id;
    p->ip_check = ip.check;
    p->hlen = hlen;
    p->l4 = ETH_HLEN + hlen;
    p->end = ETH_HLEN + tot;
    __u16 frag = bpf_ntohs(ip.frag_off);
    if (frag & IP_OFFSET) {
        p->frag = FRAG_LATER;
        return 0;
    }
    p->frag = (frag & IP_MF) ? FRAG_FIRST : FRAG_NONE;
    // A first fragment must hold the L4 header up to its checksum (RFC 1858).
    if (ip.protocol == IPPROTO_TCP) {
        struct tcphdr th;
        if (p->l4 + sizeof(th) > p->end || load(skb, p->l4, &th, sizeof(th)))
            return NAT_MALFORMED;
        p->sport = th.source;
        p->dport = th.dest;
        p->tcp_flags = ((__u8 *)&th)[13];
    } else if (ip.protocol == IPPROTO_UDP || ip.protocol == IPPROTO_ICMP) {
        struct l4_words h;
        if (p->l4 + sizeof(h) > p->end || load(skb, p->l4, &h, sizeof(h)))
            return NAT_MALFORMED;
        if (ip.protocol == IPPROTO_UDP) {
            p->sport = h.w[0];
            p->dport = h.w[1];
        } else {
            p->icmp_type = ((__u8 *)&h)[0];
            p->sport = p->dport = h.w[2];
        }
    }
    return 0;
}

// The packet quoted by the ICMP error ``p``: at least its IP header and 8 bytes.
static __always_inline int parse_inner(struct __sk_buff *skb, struct packet *p,
                                       struct inner *in)
{
    struct iphdr ip;
    in->ip = p->l4 + sizeof(struct icmphdr);
    if (in->ip + sizeof(ip) > p->end || bpf_skb_load_bytes(skb, in->ip, &ip, sizeof(ip)))
        return NAT_MALFORMED;
    if (ip.version != 4 || ip.ihl < 5)
        return NAT_MALFORMED;
    if (bpf_ntohs(ip.frag_off) & IP_OFFSET)
        return NAT_UNSUPPORTED;  // about a later fragment: no ports to find the mapping by
    in->l4 = in->ip + ip.ihl * 4;
    struct l4_words h;
    if (in->l4 + sizeof(h) > p->end || bpf_skb_load_bytes(skb, in->l4, &h, sizeof(h)))
        return NAT_MALFORMED;
    in->saddr = ip.saddr;
    in->daddr = ip.daddr;
    in->ip_check = ip.check;
    in->proto = ip.protocol;
    if (ip.protocol == IPPROTO_TCP) {
        in->sport = h.w[0];
        in->dport = h.w[1];
        // Quoted only if the error carries 18 bytes of it.
        __u32 off = in->l4 + offsetof(struct tcphdr, check);
        if (off + 2 <= p->end && !bpf_skb_load_bytes(skb, off, &in->l4_check, 2))
            in->l4_check_off = off;
    } else if (ip.protocol == IPPROTO_UDP) {
        in->sport = h.w[0];
        in->dport = h.w[1];
        in->l4_check = h.w[3];
        if (in->l4_check)
            in->l4_check_off = in->l4 + offsetof(struct udphdr, check);
    } else if (ip.protocol == IPPROTO_ICMP) {
        __u8 type = ((__u8 *)&h)[0];
        if (type != ICMP_ECHO && type != ICMP_ECHOREPLY)
            return NAT_UNSUPPORTED;
        in->sport = in->dport = h.w[2];
        in->l4_check = h.w[1];
        in->l4_check_off = in->l4 + offsetof(struct icmphdr, checksum);
    } else {
        return NAT_UNSUPPORTED;
    }
    return 0;
}

// --- rewriting ---------------------------------------------------------------------------

// The packet's source (``src``) or destination endpoint becomes (addr, port): the address
// in the IP header, and (but in later fragments) the port or echo identifier, with every
// checksum that covers them. The helpers keep CHECKSUM_PARTIAL and CHECKSUM_COMPLETE skbs
// right: the L4 checksum of a partial one holds only the pseudo header.
static __always_inline int rewrite(struct __sk_buff *skb, struct packet *p, int src,
                                   __be32 addr, __be16 port)
{
    __be32 old_addr = src ? p->saddr : p->daddr;
    __be16 old_port = src ? p->sport : p->dport;
    if (p->frag != FRAG_LATER) {
        __u32 csum_off, port_off;
        __u64 mangled = 0;
        if (p->proto == IPPROTO_TCP) {
            csum_off = p->l4 + offsetof(struct tcphdr, check);
            port_off = p->l4 + (src ? 0 : 2);
        } else if (p->proto == IPPROTO_UDP) {
            csum_off = p->l4 + offsetof(struct udphdr, check);
            port_off = p->l4 + (src ? 0 : 2);
            mangled = BPF_F_MARK_MANGLED_0;  // 0: the datagram has no checksum; keep it so
        } else {
            csum_off = p->l4 + offsetof(struct icmphdr, checksum);  // no pseudo header
            port_off = p->l4 + offsetof(struct icmphdr, un.echo.id);
        }
        if (p->proto != IPPROTO_ICMP &&
            bpf_l4_csum_replace(skb, csum_off, old_addr, addr,
                                BPF_F_PSEUDO_HDR | mangled | sizeof(addr)))
            return -1;
        if (port != old_port &&
            (bpf_l4_csum_replace(skb, csum_off, old_port, port, mangled | sizeof(port)) ||
             store(skb, port_off, &port, sizeof(port))))
            return -1;
    }
    // The IP header's checksum is never left to the device: computed here (as
    // bpf_l3_csum_replace would, RFC 1624) and written with the address.
    __be16 ip_check = csum_apply(p->ip_check, diff32(0, old_addr, addr));
    if (store(skb, IP_CSUM_OFF, &ip_check, sizeof(ip_check)) ||
        store(skb, src ? IP_SRC_OFF : IP_DST_OFF, &addr, sizeof(addr)))
        return -1;
    p->ip_check = ip_check;
    return 0;
}

// The quoted packet's source (``src``) or destination endpoint becomes (addr, port): its
// address and IP checksum, its port or echo identifier, its L4 checksum where quoted; and
// the ICMP checksum, which covers all of them. ICMP has no pseudo header, and its skb
// is never left to the device, so the words are written as computed.
static __always_inline int rewrite_inner(struct __sk_buff *skb, struct packet *p,
                                         struct inner *in, int src, __be32 addr,
                                         __be16 port)
{
    __be32 old_addr = src ? in->saddr : in->daddr;
    __be16 old_port = src ? in->sport : in->dport;
    __u32 icmp_d = diff32(0, old_addr, addr);
    __be16 ip_check = csum_apply(in->ip_check, diff32(0, old_addr, addr));
    icmp_d = diff16(icmp_d, in->ip_check, ip_check);
    if (bpf_skb_store_bytes(skb, in->ip + (src ? 12 : 16), &addr, sizeof(addr), 0) ||
        bpf_skb_store_bytes(skb, in->ip + offsetof(struct iphdr, check), &ip_check, 2, 0))
        return -1;
    __u32 port_off = in->proto == IPPROTO_ICMP ? in->l4 + offsetof(struct icmphdr, un.echo.id)
                                               : in->l4 + (src ? 0 : 2);
    if (bpf_skb_store_bytes(skb, port_off, &port, sizeof(port), 0))
        return -1;
    icmp_d = diff16(icmp_d, old_port, port);
    if (in->l4_check_off) {
        __u32 d = diff16(0, old_port, port);
        if (in->proto != IPPROTO_ICMP)
            d = diff32(d, old_addr, addr);
        __be16 l4_check = csum_apply(in->l4_check, d);
        if (in->proto == IPPROTO_UDP && l4_check == 0)
            l4_check = 0xffff;
        if (bpf_skb_store_bytes(skb, in->l4_check_off, &l4_check, 2, 0))
            return -1;
        icmp_d = diff16(icmp_d, in->l4_check, l4_check);
    }
    __u32 icmp_off = p->l4 + offsetof(struct icmphdr, checksum);
    __be16 icmp_check;
    if (bpf_skb_load_bytes(skb, icmp_off, &icmp_check, 2))
        return -1;
    icmp_check = csum_apply(icmp_check, icmp_d);
    return bpf_skb_store_bytes(skb, icmp_off, &icmp_check, 2, 0) ? -1 : 0;
}

// Only the outer source or destination address (ICMP: no pseudo header).
static __always_inline int rewrite_addr(struct __sk_buff *skb, int src, __be32 from,
                                        __be32 to)
{
    if (from == to)
        return 0;
    if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, from, to, sizeof(to)) ||
        bpf_skb_store_bytes(skb, src ? IP_SRC_OFF : IP_DST_OFF, &to, sizeof(to), 0))
        return -1;
    return 0;
}

// The frame goes back in on the interface it was leaving, addressed to it (its source MAC
// is the interface's), as if it came from the next hop.
static __always_inline int back_in(struct __sk_buff *skb)
{
    __u8 macs[12];
    if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) ||
        bpf_skb_store_bytes(skb, 0, macs + 6, 6, 0) ||
        bpf_skb_store_bytes(skb, 6, macs, 6, 0))
        return TC_ACT_SHOT;
    return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

// --- mappings ----------------------------------------------------------------------------

static __always_inline __u64 timeout_ns(struct nat_pool *pool, __u8 proto, __u8 tcp_out,
                                        __u8 tcp_in)
{
    __u32 s;
    if (proto == IPPROTO_TCP) {
        int established = (tcp_out & NAT_TCP_SYN) && (tcp_in & NAT_TCP_SYN) &&
                          !((tcp_out | tcp_in) & (NAT_TCP_FIN | NAT_TCP_RST));
        s = established ? pool->tcp_established : pool->tcp_transitory;
    } else if (proto == IPPROTO_UDP) {
        s = pool->udp;
    } else {
        s = pool->icmp;
    }
    return (__u64)s * NS;
}

// The packet passed this direction of its mapping: its time, and what TCP saw.
static __always_inline void refresh(struct nat_mapping *m, struct packet *p, __u64 now)
{
    if (m->last_seen_ns != now)
        m->last_seen_ns = now;
    if (p->proto != IPPROTO_TCP || p->frag == FRAG_LATER)
        return;
    __u8 f = p->tcp_flags;
    __u8 tcp = (f & TCP_FLAG_SYN_) ? NAT_TCP_SYN : m->tcp;
    if (f & TCP_FLAG_FIN_)
        tcp |= NAT_TCP_FIN;
    if (f & TCP_FLAG_RST_)
        tcp |= NAT_TCP_RST;
    if (tcp != m->tcp)
        m->tcp = tcp;
}

// Whether the public port of inbound entry ``e`` may go to a new mapping, and if so, take
// it (the compare-and-swap of its time makes one CPU the winner): its mapping ended and the
// hold passed, or it has been idle past its timeout and the hold (the collector is late).
static __always_inline int take_over(struct nat_mapping *e, struct nat_endpoint *pub,
                                     struct nat_pool *pool, __u64 now,
                                     struct nat_endpoint *inside)
{
    __u64 seen = e->last_seen_ns, last = seen, idle;
    __u64 hold = (__u64)pool->hold * NS;
    struct nat_endpoint owner = {.addr = e->addr, .port = e->port, .proto = pub->proto};
    int live = 0;
    if (e->flags & NAT_F_HELD) {
        idle = hold;
    } else {
        __u8 tcp_out = 0;
        struct nat_mapping *out = nat_outbound.lookup(&owner);
        if (out && out->addr == pub->addr && out->port == pub->port) {
            live = 1;
            tcp_out = out->tcp;
            if (out->last_seen_ns > last)
                last = out->last_seen_ns;
        }
        idle = timeout_ns(pool, pub->proto, tcp_out, e->tcp) + hold;
    }
    if (last >= now || now - last <= idle)
        return 0;
    if (__sync_val_compare_and_swap(&e->last_seen_ns, seen, now) != seen)
        return 0;
    e->addr = inside->addr;
    e->port = inside->port;
    e->flags = 0;
    e->tcp = 0;
    if (live) {
        nat_outbound.delete(&owner);
        nat_recent.delete(&owner);
    }
    return 1;
}

// The k-th port of binding ``b``'s blocks (k < nblocks * block_size), in network order.
// The block index is masked, not compared: the verifier then has one state per probe.
static __always_inline __be16 port_at(struct nat_binding *b, __u32 size, __u32 k)
{
    __u32 block = k / size;
    return bpf_htons(b->first[block & (NAT_MAX_BLOCKS - 1)] + (k - block * size));
}

// A mapping for ``inside`` on binding ``b``: a random port of its blocks, then the ports
// after it, until one is free (RFC 6056 algorithm 1). The inbound entry claims the port
// (BPF_NOEXIST: one CPU wins it), then the outbound one is added; a CPU that lost the race
// for the same inside endpoint gives the port back. Only if NAT_PROBES ports are taken is
// an expired mapping's port looked for, among NAT_TAKEOVER_PROBES from another random one:
// the collector frees them, this is for when it is late or gone. Blocks smaller than that
// are tried more than once (the loops are bounded by constants alone: clang turns a bound of
// min(total, NAT_PROBES) into a count the verifier cannot bound). Returns 0 (``made`` holds
// it), -ERR_EEXIST (another CPU made it: look it up), or the stat of the failure.
static __always_inline int new_mapping(struct nat_endpoint *inside, struct nat_binding *b,
                                       struct nat_pool *pool, __u64 now,
                                       struct nat_mapping *made)
{
    __u32 size = b->block_size, nblocks = b->nblocks;
    if (size == 0 || nblocks == 0 || nblocks > NAT_MAX_BLOCKS)
        return NAT_BLOCK_FULL;
    __u32 total = size * nblocks;
    struct nat_endpoint pub = {.addr = b->public_addr, .proto = inside->proto};
    struct nat_mapping rev = {.addr = inside->addr, .port = inside->port,
                              .last_seen_ns = now};
    __u32 start = bpf_get_prandom_u32() % total;
    int claimed = 0, err = -ERR_EEXIST;
    for (__u32 n = 0; n < NAT_PROBES; n++) {
        pub.port = port_at(b, size, (start + n) % total);
        err = nat_inbound.insert(&pub, &rev);
        if (err != -ERR_EEXIST)
            break;
    }
    if (err == -ERR_E2BIG)
        return NAT_MAP_FULL;
    struct nat_mapping *e = 0;
    if (err == 0) {
        claimed = 1;
    } else {
        start = bpf_get_prandom_u32() % total;
        for (__u32 n = 0; n < NAT_TAKEOVER_PROBES; n++) {
            pub.port = port_at(b, size, (start + n) % total);
            e = nat_inbound.lookup(&pub);
            if (e && take_over(e, &pub, pool, now, inside)) {
                claimed = 2;
                break;
            }
        }
    }
    if (!claimed)
        return NAT_BLOCK_FULL;
    made->addr = pub.addr;
    made->port = pub.port;
    made->flags = 0;
    made->tcp = 0;
    made->last_seen_ns = now;
    err = nat_outbound.insert(inside, made);
    if (err == 0) {
        stat(NAT_NEW_MAPPING);
        if (claimed == 2)
            stat(NAT_TAKEN_OVER);
        return 0;
    }
    if (claimed == 1) {
        nat_inbound.delete(&pub);
    } else if (e) {
        e->flags = NAT_F_HELD;  // free to take again at once
        e->last_seen_ns = 0;
    }
    return err == -ERR_E2BIG ? NAT_MAP_FULL : -ERR_EEXIST;
}

// Outbound traffic lets its remote in (address-dependent filtering: the address only).
static __always_inline void allow(struct packet *p, __be32 pub_addr, __be16 pub_port,
                                  __u8 filtering, __u64 now)
{
    struct nat_filter_key k = {.public_addr = pub_addr, .remote_addr = p->daddr,
                               .public_port = pub_port, .proto = p->proto};
    if (filtering == NAT_FILTER_ADDRESS_AND_PORT_DEPENDENT && p->proto != IPPROTO_ICMP)
        k.remote_port = p->dport;
    __u64 *seen = nat_filters.lookup(&k);
    if (seen) {
        if (*seen != now)
            *seen = now;
        return;
    }
    if (nat_filters.update(&k, &now))
        stat(NAT_FILTER_FULL);
}

static __always_inline int permitted(__u8 filtering, __be32 pub_addr, __be16 pub_port,
                                     __u8 proto, __be32 remote, __be16 remote_port)
{
    if (filtering == NAT_FILTER_ENDPOINT_INDEPENDENT)
        return 1;
    struct nat_filter_key k = {.public_addr = pub_addr, .remote_addr = remote,
                               .public_port = pub_port, .proto = proto};
    if (filtering == NAT_FILTER_ADDRESS_AND_PORT_DEPENDENT && proto != IPPROTO_ICMP)
        k.remote_port = remote_port;
    return nat_filters.lookup(&k) != 0;
}

static __always_inline void remember_fragment(__u8 dir, struct packet *p, __be32 addr,
                                              __u64 now)
{
    struct nat_frag_key k = {.saddr = p->saddr, .daddr = p->daddr, .id = p->id,
                             .proto = p->proto, .dir = dir};
    struct nat_frag f = {.addr = addr, .seen_ns = now};
    nat_fragments.update(&k, &f);
}

static __always_inline struct nat_frag *fragment(__u8 dir, struct packet *p)
{
    struct nat_frag_key k = {.saddr = p->saddr, .daddr = p->daddr, .id = p->id,
                             .proto = p->proto, .dir = dir};
    return nat_fragments.lookup(&k);
}

// --- egress ------------------------------------------------------------------------------

// A translated packet leaves; to a public address of ours (hairpinning, RFC 4787 REQ-9) it
// goes back in on this interface instead, where nat_in translates its destination.
static __always_inline int sent_out(struct __sk_buff *skb, struct packet *p)
{
    stat(NAT_OUT_TRANSLATED);
    __be32 daddr = p->daddr;
    __u32 zero = 0, d = bpf_ntohl(daddr);
    struct nat_node *node = nat_node.lookup(&zero);
    if (node && (d < node->lo || d > node->hi))
        return TC_ACT_OK;  // most packets: no hash lookup
    if (!nat_addresses.lookup(&daddr))
        return TC_ACT_OK;
    stat(NAT_HAIRPIN);
    return back_in(skb);
}

// Whether the device (or the stack, at the latest) is to fill the packet's L4 checksum
// (CHECKSUM_PARTIAL: a veth's, a tap's sender). BPF cannot read ip_summed, but
// bpf_l4_csum_replace tells: a pseudo-header change of 0 to 1 moves a partial skb's field
// (the pseudo header's sum) up by one, a complete checksum down by one. Undone at once.
// ``seed``: the field as it is.
static __always_inline int checksum_partial(struct __sk_buff *skb, struct packet *p,
                                            __u16 *seed)
{
    if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
        return 0;  // ICMP is always checksummed by its sender
    __u32 off = p->l4 + (p->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
                                                 : offsetof(struct udphdr, check));
    __u16 before, after;
    if (bpf_skb_load_bytes(skb, off, &before, 2) ||
        bpf_l4_csum_replace(skb, off, 0, bpf_htonl(1), BPF_F_PSEUDO_HDR | 4))
        return -1;
    if (bpf_skb_load_bytes(skb, off, &after, 2) ||
        bpf_l4_csum_replace(skb, off, bpf_htonl(1), 0, BPF_F_PSEUDO_HDR | 4))
        return -1;
    *seed = before;
    return after != csum_apply(before, diff32(0, 0, bpf_htonl(1)));
}

// The packet becomes, in place, an ICMP destination unreachable, communication
// administratively prohibited (3/13), from the subscriber's public address, quoting its
// header and 8 bytes (RFC 792), and goes back in to be routed to the subscriber. When the
// device is to fill the quoted L4 checksum, the quote keeps that field (20 bytes of TCP),
// and the ICMP checksum counts the quoted L4 bytes as what they will sum to once filled:
// the complement of the seed the field holds (the filled field is the complement of the
// sum of the bytes and the seed).
static __always_inline int send_prohibited(struct __sk_buff *skb, struct packet *p,
                                           __be32 from)
{
    __u16 seed = 0;
    int partial = checksum_partial(skb, p, &seed);
    if (partial < 0)
        return -1;
    __u32 l4_quote = partial && p->proto == IPPROTO_TCP ? sizeof(struct tcphdr) : 8;
    __u32 quote = p->hlen + l4_quote;
    if (quote > p->end - ETH_HLEN || bpf_skb_change_tail(skb, ETH_HLEN + quote, 0))
        return -1;
    if (bpf_skb_adjust_room(skb, sizeof(struct iphdr) + sizeof(struct icmphdr),
                            BPF_ADJ_ROOM_MAC, 0))
        return -1;
    struct {
        struct iphdr ip;
        struct icmphdr icmp;
    } h = {};
    h.ip.version = 4;
    h.ip.ihl = 5;
    h.ip.ttl = 64;
    h.ip.protocol = IPPROTO_ICMP;
    h.ip.tot_len = bpf_htons(sizeof(h) + quote);
    h.ip.saddr = from;
    h.ip.daddr = p->saddr;
    h.ip.check = ~fold(bpf_csum_diff(0, 0, (__be32 *)&h.ip, sizeof(h.ip), 0));
    h.icmp.type = ICMP_DEST_UNREACH;
    h.icmp.code = ICMP_PKT_FILTERED;
    if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, sizeof(h), 0))
        return -1;
    __u8 buf[8 + 60 + 20] = {};
    __u32 len = (sizeof(struct icmphdr) + (partial ? p->hlen : quote)) & 0x7f;
    if (len > sizeof(buf) || len < sizeof(struct icmphdr))
        return -1;
    __u32 icmp = ETH_HLEN + sizeof(struct iphdr);
    if (bpf_skb_load_bytes(skb, icmp, buf, len))
        return -1;
    __u64 sum = bpf_csum_diff(0, 0, (__be32 *)buf, len, 0);
    if (partial)
        sum += (__u16)~seed;
    __u16 check = ~fold(sum);
    if (bpf_skb_store_bytes(skb, icmp + offsetof(struct icmphdr, checksum), &check, 2, 0))
        return -1;
    return 0;
}

// No free port in the subscriber's blocks: dropped, counted, signalled to the agent in
// nat_exhausted, and answered with an ICMP 3/13 at most every NAT_ICMP_INTERVAL_NS.
static __always_inline int block_full(struct __sk_buff *skb, struct packet *p,
                                      struct nat_binding *b, __u64 now)
{
    stat(NAT_BLOCK_FULL);
    __be32 inside = p->saddr, from = b->public_addr;
    struct nat_exhaustion *x = nat_exhausted.lookup(&inside);
    if (!x) {
        struct nat_exhaustion first = {.count = 1, .last_ns = now};
        nat_exhausted.update(&inside, &first);
        x = nat_exhausted.lookup(&inside);
        if (!x)
            return TC_ACT_SHOT;
    } else {
        __sync_fetch_and_add(&x->count, 1);
        x->last_ns = now;
    }
    __u64 sent = x->icmp_ns;
    if (sent && now - sent < NAT_ICMP_INTERVAL_NS)
        return TC_ACT_SHOT;
    if (__sync_val_compare_and_swap(&x->icmp_ns, sent, now) != sent)
        return TC_ACT_SHOT;
    if (send_prohibited(skb, p, from))
        return TC_ACT_SHOT;
    stat(NAT_ICMP_SENT);
    return back_in(skb);
}

// An ICMP error leaving about a packet that came in (an inside host's port unreachable, the
// node's own "fragmentation needed" towards the access side): the quoted packet went to the
// inside endpoint, and gets the public one back. The outer source is translated as any
// packet of its sender's: the mapping's public address when it is the quoted destination,
// its binding's otherwise; the node's own address is kept.
static __always_inline int icmp_error_out(struct __sk_buff *skb, struct packet *p,
                                          struct nat_binding *b)
{
    struct inner in = {};
    int r = parse_inner(skb, p, &in);
    if (r)
        return drop(skb, r);
    struct nat_endpoint inside = {.addr = in.daddr, .port = in.dport, .proto = in.proto};
    struct nat_mapping *m = nat_outbound.lookup(&inside);
    if (!m) {
        if (b)
            return drop(skb, NAT_ICMP_ERROR_UNKNOWN);
        stat(NAT_OUT_PASSED);  // not about a mapping of ours: the node's own
        return TC_ACT_OK;
    }
    __be32 to_addr = m->addr, src = p->saddr;
    __be16 to_port = m->port;
    if (p->saddr == in.daddr) {
        src = to_addr;
    } else if (b) {
        src = b->public_addr;
    } else {
        struct nat_prefix k = {.prefixlen = 32, .addr = p->saddr};
        if (nat_inside.lookup(&k))
            return drop(skb, NAT_NO_BINDING);  // never out with an inside source
    }
    if (rewrite_inner(skb, p, &in, 0, to_addr, to_port) || rewrite_addr(skb, 1, p->saddr, src))
        return drop(skb, NAT_WRITE_ERROR);
    stat(NAT_ICMP_ERROR);
    return sent_out(skb, p);
}

// nat_recent: a steady packet of an inside endpoint whose mapping nat_out read less than
// NAT_RECHECK_NS ago is translated by the copy, without the mapping (its time is refreshed
// at the next read). Not for what the mapping itself must see: TCP's SYN, FIN and RST (its
// state), fragments (the fragment table), filtering pools (their remotes' times).
// Only asked by nat_out of TCP, UDP and ICMP echo, the packets a mapping translates.
static __always_inline int steady(struct packet *p)
{
    return p->frag == FRAG_NONE &&
           !(p->proto == IPPROTO_TCP &&
             (p->tcp_flags & (TCP_FLAG_SYN_ | TCP_FLAG_FIN_ | TCP_FLAG_RST_)));
}

// ``r``: the copy nat_out found too old, or none.
static __always_inline void remember_recent(struct nat_endpoint *inside, struct nat_recent *r,
                                            __be32 to_addr, __be16 to_port, __u64 now)
{
    if (r) {  // in place: no allocation
        r->addr = to_addr;
        r->port = to_port;
        r->checked_ns = now;
        return;
    }
    struct nat_recent fresh = {.addr = to_addr, .port = to_port, .checked_ns = now};
    nat_recent.update(inside, &fresh);  // full: left uncopied
}

// A packet of a mapped inside endpoint leaves by mapping ``m`` (to_addr, to_port).
static __always_inline int translate_out(struct __sk_buff *skb, struct packet *p,
                                         struct nat_mapping *m, __u8 filtering,
                                         __be32 to_addr, __be16 to_port, __u64 now)
{
    refresh(m, p, now);
    if (filtering != NAT_FILTER_ENDPOINT_INDEPENDENT)
        allow(p, to_addr, to_port, filtering, now);
    if (p->frag == FRAG_FIRST)
        remember_fragment(NAT_FRAG_OUT, p, to_addr, now);
    if (rewrite(skb, p, 1, to_addr, to_port))
        return drop(skb, NAT_WRITE_ERROR);
    return sent_out(skb, p);
}

int nat_out(struct __sk_buff *skb)
{
    if (skb->protocol != bpf_htons(ETH_P_IP)) {
        stat(NAT_NOT_IPV4);
        return TC_ACT_OK;
    }
    struct packet p = {};
    int r = parse(skb, &p);
    if (r)
        return drop(skb, r);
    __be32 saddr = p.saddr;
    // A known flow's packet (the steady state) needs its mapping only: its pool (looked
    // up only when some pool filters: nat_node) comes by its public address, as nat_in
    // finds it, and the binding, a likely cache miss among many subscribers', is left
    // unread. The binding goes before its mappings (the agent deletes it, then flushes
    // them); until they go, they translate both ways, as nat_in always did.
    if (p.frag != FRAG_LATER &&
        (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP ||
         (p.proto == IPPROTO_ICMP && p.icmp_type == ICMP_ECHO))) {
        struct nat_endpoint inside = {.addr = saddr, .port = p.sport, .proto = p.proto};
        __u32 zero = 0;
        struct nat_node *node = nat_node.lookup(&zero);
        if (!node)
            return drop(skb, NAT_INTERNAL);
        // A flow's first packet comes back from nat_new: its copy waits for the second
        // packet, so a new flow allocates no third entry.
        int made = skb->cb[0] == NAT_CB_MADE;
        if (made)
            skb->cb[0] = 0;
        int copy = !node->filters && !made && steady(&p);
        struct nat_recent *r = copy ? nat_recent.lookup(&inside) : 0;
        if (r && bpf_ktime_get_coarse_ns() - r->checked_ns < NAT_RECHECK_NS) {
            if (rewrite(skb, &p, 1, r->addr, r->port))
                return drop(skb, NAT_WRITE_ERROR);
            return sent_out(skb, &p);
        }
        struct nat_mapping *m = nat_outbound.lookup(&inside);
        if (m) {
            __be32 to_addr = m->addr;
            __be16 to_port = m->port;
            __u64 now = bpf_ktime_get_coarse_ns();
            if (!node->filters) {
                if (copy)
                    remember_recent(&inside, r, to_addr, to_port, now);
                return translate_out(skb, &p, m, NAT_FILTER_ENDPOINT_INDEPENDENT, to_addr,
                                     to_port, now);
            }
            struct nat_address *a = nat_addresses.lookup(&to_addr);
            __u32 pool_idx = a ? a->pool : 0;
            struct nat_pool *pool = a ? nat_pools.lookup(&pool_idx) : 0;
            if (pool)
                return translate_out(skb, &p, m, pool->filtering, to_addr, to_port, now);
        }
    }
    struct nat_binding *b = nat_bindings.lookup(&saddr);
    if (p.proto == IPPROTO_ICMP && p.frag == FRAG_NONE && is_icmp_error(p.icmp_type))
        return icmp_error_out(skb, &p, b);
    if (!b) {
        struct nat_prefix k = {.prefixlen = 32, .addr = saddr};
        if (nat_inside.lookup(&k))
            return drop(skb, NAT_NO_BINDING);
        stat(NAT_OUT_PASSED);
        return TC_ACT_OK;
    }
    __u32 pool_idx = b->pool;
    struct nat_pool *pool = nat_pools.lookup(&pool_idx);
    if (!pool)
        return drop(skb, NAT_NO_BINDING);
    __u64 now = bpf_ktime_get_coarse_ns();
    if (p.frag == FRAG_LATER) {
        struct nat_frag *f = fragment(NAT_FRAG_OUT, &p);
        if (!f)
            return drop(skb, NAT_FRAGMENT_UNKNOWN);
        if (rewrite(skb, &p, 1, f->addr, 0))
            return drop(skb, NAT_WRITE_ERROR);
        stat(NAT_FRAGMENT);
        return sent_out(skb, &p);
    }
    if (p.proto == IPPROTO_ICMP) {
        if (p.icmp_type != ICMP_ECHO)
            return drop(skb, NAT_UNSUPPORTED);
    } else if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP) {
        return drop(skb, NAT_UNSUPPORTED);
    }
    struct nat_endpoint inside = {.addr = saddr, .port = p.sport, .proto = p.proto};
    struct nat_mapping *m = nat_outbound.lookup(&inside);
    if (!m) {
        // A reset of no mapping resets nothing outside (what came in for it was dropped):
        // it takes no port.
        if (p.proto == IPPROTO_TCP && (p.tcp_flags & TCP_FLAG_RST_))
            return drop(skb, NAT_NO_MAPPING);
        nat_progs.call(skb, NAT_PROG_NEW);
        return drop(skb, NAT_INTERNAL);
    }
    return translate_out(skb, &p, m, pool->filtering, m->addr, m->port, now);
}

// The first packet of an inside endpoint (tail-called by nat_out, which has checked it):
// its mapping is made, and nat_out runs again to translate it. Its own program, so the
// verifier walks the port search apart from the translation.
int nat_new(struct __sk_buff *skb)
{
    struct packet p = {};
    if (parse(skb, &p))
        return drop(skb, NAT_MALFORMED);
    __be32 saddr = p.saddr;
    struct nat_binding *b = nat_bindings.lookup(&saddr);
    if (!b)
        return drop(skb, NAT_NO_BINDING);
    __u32 pool_idx = b->pool;
    struct nat_pool *pool = nat_pools.lookup(&pool_idx);
    if (!pool)
        return drop(skb, NAT_NO_BINDING);
    __u64 now = bpf_ktime_get_coarse_ns();
    struct nat_endpoint inside = {.addr = saddr, .port = p.sport, .proto = p.proto};
    struct nat_mapping made;
    int r = new_mapping(&inside, b, pool, now, &made);
    if (r == NAT_BLOCK_FULL)
        return block_full(skb, &p, b, now);
    if (r > 0)
        return drop(skb, r);
    // One event per mapping made, not per packet: who had this public address and port.
    if (observed())
        flow_nat(skb, FLOW_TRANSLATED, NAT_NEW_MAPPING, made.addr, made.port);
    skb->cb[0] = NAT_CB_MADE;
    nat_progs.call(skb, NAT_PROG_OUT);
    return drop(skb, NAT_INTERNAL);
}

// --- ingress -----------------------------------------------------------------------------

// An ICMP error coming in about a packet that went out (PMTU's "fragmentation needed",
// time exceeded, unreachable): the quoted packet came from the public endpoint, and gets
// the inside one back, as does the outer destination. Filtering looks at the quoted
// destination (the remote the subscriber sent to), not at the router that reports. Errors
// do not refresh the mapping (RFC 5508).
static __always_inline int icmp_error_in(struct __sk_buff *skb, struct packet *p,
                                         struct nat_pool *pool)
{
    struct inner in = {};
    int r = parse_inner(skb, p, &in);
    if (r)
        return drop(skb, r);
    if (in.saddr != p->daddr)
        return drop(skb, NAT_ICMP_ERROR_UNKNOWN);
    struct nat_endpoint pub = {.addr = in.saddr, .port = in.sport, .proto = in.proto};
    struct nat_mapping *m = nat_inbound.lookup(&pub);
    if (!m || (m->flags & NAT_F_HELD))
        return drop(skb, NAT_ICMP_ERROR_UNKNOWN);
    if (!permitted(pool->filtering, in.saddr, in.sport, in.proto, in.daddr, in.dport))
        return drop(skb, NAT_FILTERED);
    __be32 to_addr = m->addr;
    __be16 to_port = m->port;
    if (rewrite_inner(skb, p, &in, 1, to_addr, to_port) ||
        rewrite_addr(skb, 0, p->daddr, to_addr))
        return drop(skb, NAT_WRITE_ERROR);
    stat(NAT_ICMP_ERROR);
    stat(NAT_IN_TRANSLATED);
    return TC_ACT_OK;
}

int nat_in(struct __sk_buff *skb)
{
    if (skb->protocol != bpf_htons(ETH_P_IP)) {
        stat(NAT_NOT_IPV4);
        return TC_ACT_OK;
    }
    __be32 daddr;
    if (load(skb, IP_DST_OFF, &daddr, sizeof(daddr)))
        return drop(skb, NAT_MALFORMED);
    struct nat_address *a = nat_addresses.lookup(&daddr);
    if (!a) {
        stat(NAT_IN_PASSED);
        return TC_ACT_OK;
    }
    __u32 pool_idx = a->pool;
    struct nat_pool *pool = nat_pools.lookup(&pool_idx);
    if (!pool)
        return drop(skb, NAT_NO_MAPPING);
    struct packet p = {};
    int r = parse(skb, &p);
    if (r)
        return drop(skb, r);
    if (p.frag == FRAG_LATER) {
        struct nat_frag *f = fragment(NAT_FRAG_IN, &p);
        if (!f)
            return drop(skb, NAT_FRAGMENT_UNKNOWN);
        if (rewrite(skb, &p, 0, f->addr, 0))
            return drop(skb, NAT_WRITE_ERROR);
        stat(NAT_FRAGMENT);
        stat(NAT_IN_TRANSLATED);
        return TC_ACT_OK;
    }
    if (p.proto == IPPROTO_ICMP) {
        if (p.frag == FRAG_NONE && is_icmp_error(p.icmp_type))
            return icmp_error_in(skb, &p, pool);
        if (p.icmp_type != ICMP_ECHOREPLY)
            return drop(skb, p.icmp_type == ICMP_ECHO ? NAT_NO_MAPPING : NAT_UNSUPPORTED);
    } else if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP) {
        return drop(skb, NAT_UNSUPPORTED);
    }
    struct nat_endpoint pub = {.addr = p.daddr, .port = p.dport, .proto = p.proto};
    struct nat_mapping *m = nat_inbound.lookup(&pub);
    if (!m || (m->flags & NAT_F_HELD))
        return drop(skb, NAT_NO_MAPPING);
    if (!permitted(pool->filtering, p.daddr, p.dport, p.proto, p.saddr, p.sport))
        return drop(skb, NAT_FILTERED);
    __be32 to_addr = m->addr;
    __be16 to_port = m->port;
    __u64 now = bpf_ktime_get_coarse_ns();
    refresh(m, &p, now);
    if (p.frag == FRAG_FIRST)
        remember_fragment(NAT_FRAG_IN, &p, to_addr, now);
    if (rewrite(skb, &p, 0, to_addr, to_port))
        return drop(skb, NAT_WRITE_ERROR);
    stat(NAT_IN_TRANSLATED);
    return TC_ACT_OK;
}

// Building a DHCP reply in place, for the access ingress program's reply(): pure helpers,
// no maps and no helper calls, each inlined. The entry file does the lookups.
#pragma once
#include "lib/dhcp.h"
#include "lib/words.h"

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

// Whether a lease answers this request: 0, or the reason it does not (a counter).
static __always_inline int answerable(const struct subscriber_lease *lease,
                                      const struct bootp *b, __u8 msg_type, __be32 requested,
                                      __be32 server_id, __u64 now)
{
    if (b->giaddr && b->giaddr != lease->giaddr)
        return CNT_PASS_CHANGED;  // another relay: maybe another link and subnet
    if (lease->expires <= now)
        return CNT_PASS_EXPIRED;
    if (msg_type == 3) {
        __be32 want = b->ciaddr ? b->ciaddr : requested;
        // A wrong address or another server's id: the slow path NAKs or lets go.
        if (want != lease->address || (server_id && server_id != lease->server_id))
            return CNT_PASS_WRONG_ADDRESS;
    }
    return 0;
}

// Options 53, 54, 51, 58, 59, 1, 3, 28, 6, 15, then 82 echoed verbatim, then END: the slow
// path's order, packed, assembled in scratch memory while the request is intact. Every
// write past an option's end writes zeros (PAD), so the tail stays clean. Returns the
// options' length in whole 8-byte words, at least 300 bytes of DHCP (RFC 1542); 0 when
// they would not fit (cannot happen with the bounds here).
static __always_inline __u32 reply_options(__u8 *ob, __u8 reply_type,
                                           const struct subscriber_lease *lease,
                                           const struct subnet_options *so,
                                           const __u8 *relay, __u32 len82)
{
    zero(ob, REPLY_OPTIONS_LEN);
    __u32 lease_s = lease->lease_seconds;
    __u32 dns_count = so->dns_count, domain_len = so->domain_len;
    ob[0] = 53; ob[1] = 1; ob[2] = reply_type;
    put_option4(ob + 3, 54, lease->server_id);
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
        for (int w = 0; w < (MAX_RELAY_AGENT_LEN + 2) / 8; w++)  // zero-padded
            store64(ob + pos + w * 8, load64(relay + w * 8));
        pos += 2 + len82;
    }
    ob[pos] = 255;
    __u32 opts_len = (pos + 1 + 7) & ~7U;  // whole words: the copy into the packet
    if (opts_len < MIN_REPLY_OPTIONS_LEN)
        opts_len = MIN_REPLY_OPTIONS_LEN;
    return opts_len > REPLY_OPTIONS_LEN ? 0 : opts_len;
}

// Where a reply goes (RFC 2131 §4.1): to the relay, else to ciaddr, else broadcast when
// asked, else unicast to the address given. The MACs are copies on the stack, aligned so
// that copy_mac's word accesses are too (the verifier insists).
struct reply_to {
    __u8 mac[8] __attribute__((aligned(8)));
    __be32 ip;
    __be16 port;
};

static __always_inline void reply_address(struct reply_to *to, const __u8 *src_mac,
                                          const __u8 *chaddr, __be32 giaddr, __be32 ciaddr,
                                          __be16 flags, __be32 address)
{
    to->port = bpf_htons(DHCP_CLIENT_PORT);
    if (giaddr) {
        to->ip = giaddr;
        copy_mac(to->mac, src_mac);
        to->port = bpf_htons(DHCP_SERVER_PORT);
    } else if (ciaddr) {
        to->ip = ciaddr;
        copy_mac(to->mac, src_mac);
    } else if (flags & bpf_htons(0x8000)) {
        to->ip = 0xffffffff;
        __builtin_memset(to->mac, 0xff, 6);
    } else {
        to->ip = address;
        copy_mac(to->mac, chaddr);
    }
}

// The IPv4 and UDP headers of a reply from `saddr`; the UDP checksum is written last. The
// IPv4 checksum is summed from the values written (id and frag_off are zero), in the
// header's own byte order: no helper call. `addr_sum` is both addresses as 16-bit words.
static __always_inline void write_ip_udp(struct iphdr *ip, struct udphdr *udp, __be32 saddr,
                                         __be32 daddr, __be16 dport, __be16 tot_len,
                                         __be16 udp_len, __u64 addr_sum)
{
    ip->version = 4;
    ip->ihl = 5;
    ip->tos = 0;
    ip->tot_len = tot_len;
    ip->id = 0;
    ip->frag_off = 0;
    ip->ttl = 64;
    ip->protocol = IPPROTO_UDP;
    ip->saddr = saddr;
    ip->daddr = daddr;
    ip->check = fold((__u64)bpf_htons(0x4500) + tot_len + bpf_htons(64 << 8 | IPPROTO_UDP) +
                     addr_sum);
    udp->source = bpf_htons(DHCP_SERVER_PORT);
    udp->dest = dport;
    udp->len = udp_len;
    udp->check = 0;
}

// The BOOTP fields of the reply, in place: xid, flags, giaddr, chaddr and the magic cookie
// are already the request's.
static __always_inline void write_bootp(struct bootp *b, __u8 msg_type, __be32 ciaddr,
                                        __be32 address)
{
    b->op = 2;
    b->hops = 0;
    b->secs = 0;
    b->ciaddr = msg_type == 3 ? ciaddr : 0;
    b->yiaddr = address;
    b->siaddr = 0;
    zero(b->sname, sizeof(b->sname) + sizeof(b->file));
}

// The options, copied from the scratch copy into the packet up to its end (the resize made
// it end at the options' end). Returns their sum as 32-bit halves, for the UDP checksum:
// the helpers (bpf_xdp_store_bytes, bpf_csum_diff) cost a call each, ~15 ns with return
// thunks.
static __always_inline __u64 store_options(__u8 *o, const __u8 *ob, const void *end)
{
    __u64 sum = 0;
#pragma unroll
    for (int w = 0; w < REPLY_OPTIONS_LEN / 8; w++) {
        if ((void *)(o + w * 8 + 8) > end)
            break;
        __u64 x = load64(ob + w * 8);
        store64(o + w * 8, x);
        sum += (x & 0xffffffff) + (x >> 32);
    }
    return sum;
}

// The UDP checksum, summed in the program: 16-bit words in memory order (RFC 1071 §2(B)) of
// everything that is not zero: the pseudo header, the UDP header, the fixed fields up to
// chaddr, the magic cookie and the options (`sum`; sname, file and PAD add nothing).
static __always_inline __u16 udp_checksum(const struct bootp *b, __u64 sum, __be16 flags,
                                          __be32 address, __be32 giaddr, __be16 dport,
                                          __be16 udp_len, __u64 addr_sum)
{
    const __u32 *hw = (const __u32 *)b;  // op..hops, xid: as written / as they came
    const __u32 *cw = (const __u32 *)b->chaddr;
    sum += (__u64)hw[0] + hw[1] + flags + b->ciaddr + address + giaddr +  // 64-bit: carries
           cw[0] + cw[1] + cw[2] + cw[3] + bpf_htonl(DHCP_MAGIC);
    sum += bpf_htons(DHCP_SERVER_PORT) + dport + udp_len;        // UDP header, check 0
    sum += addr_sum + bpf_htons(IPPROTO_UDP) + udp_len;          // pseudo header
    __u16 csum = fold(sum);
    return csum ? csum : 0xffff;
}

// bng_lab/udpgen.py: packets/s through a node's network stack, for the benchmarks
// (bench/qos.py, bench/nat.py). A load generator and a receive counter, both XDP.
//
// `generate` runs under BPF_PROG_RUN in live-frame mode as if received on one of the node's
// interfaces and returns XDP_PASS: each frame enters the node's network stack in the sending
// call, on the sending CPU, is routed and leaves through the path under test. Every frame is
// a 60-byte UDP datagram (64 bytes on the wire with the FCS) to the discard port, without a
// UDP checksum (0: none), from or to subscriber i in turn (GEN_DST: to it, GEN_SRC: from
// it), and with GEN_SRC from one of `ports` source ports per subscriber: frame k is
// subscriber k % subscribers, port first_port + (k / subscribers) % ports. Pages come back
// with whatever the path left in them (the forwarding decrements the TTL, the neighbour
// output rewrites the MACs, a NAT rewrites addresses), so each frame is written whole from
// the template.
//
// `receive` is attached to the far end: it counts the generator's frames and drops them,
// and stamps the time of the first and of every 64th, so the rate is taken in the kernel
// between two stamps (no syscall, no Python in the window). It also counts the frames that
// arrive still from a subscriber's address (a NAT would have rewritten them) and keeps the
// source of the last one.
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#define FRAME_LEN 60
#define DISCARD_PORT 9
#define PER_24 254      // subscriber i: <base>.(i / 254).(i % 254 + 1)
#define GEN_DST 0       // gen_config.vary: the destination is the subscriber
#define GEN_SRC 1       // ... the source

struct gen_config {
    u32 subscribers;
    u32 base;           // the subscribers' /16, host byte order
    u32 csum_partial;   // the template's IP header summed as 16-bit words, the varied
                        // address and the checksum 0
    u16 ports;          // GEN_SRC: source ports per subscriber (0: the template's)
    u16 first_port;
    u32 vary;           // GEN_DST, GEN_SRC
    u32 pad;
};

struct gen_template {
    u8 data[FRAME_LEN];
};

struct rx {
    u64 packets;
    u64 first_ns;       // when the first frame arrived
    u64 stamped_ns;     // when the last stamped frame arrived ...
    u64 stamped;        // ... and the count then
    u64 from_subscribers;  // frames whose source is in the subscribers' /16
    u32 last_saddr;     // the last frame's source, network order
    u16 last_sport;     // ... and source port, network order
    u16 pad;
};

BPF_ARRAY(config, struct gen_config, 1);
BPF_ARRAY(template, struct gen_template, 1);
BPF_PERCPU_ARRAY(sent, u64, 1);
BPF_PERCPU_ARRAY(received, struct rx, 1);

int generate(struct xdp_md *ctx)
{
    int zero = 0;
    struct gen_config *cfg = config.lookup(&zero);
    struct gen_template *t = template.lookup(&zero);
    u64 *seq = sent.lookup(&zero);
    if (!cfg || !t || !seq || !cfg->subscribers)
        return XDP_ABORTED;
    if (bpf_xdp_store_bytes(ctx, 0, t->data, FRAME_LEN))
        return XDP_ABORTED;
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct iphdr *ip = data + ETH_HLEN;
    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > end)
        return XDP_ABORTED;
    u64 k = *seq;
    *seq = k + 1;
    u32 i = k % cfg->subscribers;
    u32 addr = bpf_htonl(cfg->base + ((i / PER_24) << 8) + i % PER_24 + 1);
    if (cfg->vary == GEN_SRC) {
        ip->saddr = addr;
        if (cfg->ports)
            udp->source = bpf_htons(cfg->first_port + (k / cfg->subscribers) % cfg->ports);
    } else {
        ip->daddr = addr;
    }
    u32 sum = cfg->csum_partial + (addr & 0xffff) + (addr >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    ip->check = ~sum & 0xffff;
    return XDP_PASS;
}

int receive(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
        ip->protocol != IPPROTO_UDP || udp->dest != bpf_htons(DISCARD_PORT))
        return XDP_PASS;
    int zero = 0;
    struct rx *r = received.lookup(&zero);
    struct gen_config *cfg = config.lookup(&zero);
    if (!r || !cfg)
        return XDP_DROP;
    u64 n = r->packets + 1;
    r->packets = n;
    if ((bpf_ntohl(ip->saddr) & 0xffff0000) == cfg->base)
        r->from_subscribers++;
    r->last_saddr = ip->saddr;
    r->last_sport = udp->source;
    if (n == 1 || !(n & 63)) {
        u64 now = bpf_ktime_get_ns();
        if (n == 1)
            r->first_ns = now;
        r->stamped_ns = now;
        r->stamped = n;
    }
    return XDP_DROP;
}

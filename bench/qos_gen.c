// bench/qos.py: packets/s through the download shaper. A load generator and a receive counter,
// both XDP.
//
// `generate` runs under BPF_PROG_RUN in live-frame mode as if received on the bng's uplink
// and returns XDP_PASS: each frame enters the bng's network stack in the sending call, on the
// sending CPU, is routed to the access interface and leaves it through the shaper under test.
// Every frame is a 60-byte UDP datagram (64 bytes on the wire with the FCS) to the discard
// port of the next subscriber in turn, so every installed class sees traffic. Pages come back
// with whatever the path left in them (the forwarding decrements the TTL, the neighbour
// output rewrites the MACs), so each frame is written whole from the template.
//
// `receive` is attached to the subscribers' end of the access link: it counts the generator's
// frames and drops them, and stamps the time of the first and of every 64th, so the rate is
// taken in the kernel between two stamps (no syscall, no Python in the window).
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#define FRAME_LEN 60
#define DISCARD_PORT 9
#define PER_24 254      // subscriber i: <base>.(i / 254).(i % 254 + 1)

struct gen_config {
    u32 subscribers;
    u32 base;           // the subscribers' /16, host byte order
    u32 csum_partial;   // the template's IP header summed as 16-bit words, daddr and check 0
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
    if ((void *)(ip + 1) > end)
        return XDP_ABORTED;
    u32 i = *seq % cfg->subscribers;
    *seq += 1;
    u32 daddr = bpf_htonl(cfg->base + ((i / PER_24) << 8) + i % PER_24 + 1);
    ip->daddr = daddr;
    u32 sum = cfg->csum_partial + (daddr & 0xffff) + (daddr >> 16);
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
    if (!r)
        return XDP_DROP;
    u64 n = r->packets + 1;
    r->packets = n;
    if (n == 1 || !(n & 63)) {
        u64 now = bpf_ktime_get_ns();
        if (n == 1)
            r->first_ns = now;
        r->stamped_ns = now;
        r->stamped = n;
    }
    return XDP_DROP;
}

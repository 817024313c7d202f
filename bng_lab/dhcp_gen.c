// bench/dhcp.py --scenario known: a DHCP load generator and reply counter in the kernel.
//
// `generate` runs under BPF_PROG_RUN in live-frame mode as if received on the switch side
// of the server's access link (up0): it turns the template request into the next client's
// DISCOVER or REQUEST and sends it out of up0 (XDP_TX), to the server. perfdhcp, one
// process, tops out near 30k DISCOVER/s on this machine; this goes far beyond.
//
// `count` is attached to up0 and sees every reply the server sends to the relay: it counts
// OFFER/ACK/NAK, learns each client's address, checks that an ACK carries the address the
// client asked for, records the delay (the request's xid is the low 32 bits of the clock
// when it was sent; servers echo it), and drops the reply. Everything else passes (ARP).
// An ACK that arrives before the sending ends (until_ns) is counted a second time, as in
// the window: the rate counts only those; the drops count every reply, late ones too.
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>

#ifndef MAX_CLIENTS
#define MAX_CLIENTS 65536
#endif
#ifndef FRAME_LEN
#define FRAME_LEN 342             // bench/dhcpgen.py: request_template()
#endif
#define HIST_BUCKETS 128          // quarter octaves of nanoseconds: 2^(b/4) ns
#define OPTS_AT (14 + 20 + 8 + 240) // options start in the template (untagged, IHL 5)

enum gen_mode { MODE_DORA = 0, MODE_DISCOVER = 1, MODE_REQUEST = 2 };
enum gen_counter {
    SENT_DISCOVER = 0, SENT_REQUEST, GOT_OFFER, GOT_ACK, GOT_NAK, GOT_WRONG_ADDRESS,
    GOT_OTHER, GOT_ACK_IN_WINDOW, GEN_COUNTERS,
};

struct gen_config {
    u32 clients;     // client i has chaddr 02:00:ii:ii:ii:01 (i in 24 bits)
    u32 mode;
    u32 server_id;   // network byte order
    u32 action;      // XDP_TX: out of the interface; XDP_PASS: into its stack
    u64 interval_ns; // between two frames; 0: as fast as the CPU can
    u64 until_ns;    // CLOCK_MONOTONIC: send nothing from then on; the window's end
    u64 limit;       // frames to send in all (sequence numbers 0..limit-1)
    u32 focus;       // MODE_REQUEST: 0, or one frame in `focus` goes round the clients and
                     // the others all go to client 0 (one subscriber flooding its lease)
    u32 pad;
};

// Pacing: one BPF_PROG_RUN call runs the program for many repetitions on one CPU and
// returns XDP_DROP (nothing sent, the page recycled at once) until the next frame is
// due. A call has a fixed cost of tens of milliseconds here, so pacing by calls from
// userspace would send in bursts that no server's socket buffer takes.
struct gen_pace {
    u64 seq;         // frames sent: which client and message are next
    u64 next_ns;     // when the next frame is due
};

// The request every frame starts from. Pages are recycled with whatever the last user
// (the server's fast path builds its reply in place) left in them, so each frame is
// written whole.
struct gen_template {
    u8 data[FRAME_LEN];
};

struct client {
    u32 address;     // learned from its OFFER, network byte order; 0 until then
    u32 acked;       // ACKs it got
};

BPF_ARRAY(config, struct gen_config, 1);
BPF_ARRAY(template, struct gen_template, 1);
BPF_ARRAY(clients, struct client, MAX_CLIENTS);
BPF_PERCPU_ARRAY(pace, struct gen_pace, 1);
BPF_PERCPU_ARRAY(counters, u64, GEN_COUNTERS);
BPF_PERCPU_ARRAY(delay_offer, u64, HIST_BUCKETS);
BPF_PERCPU_ARRAY(delay_ack, u64, HIST_BUCKETS);

static __always_inline void bump(int idx)
{
    u64 *c = counters.lookup(&idx);
    if (c)
        *c += 1;
}

int generate(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    if (data + OPTS_AT + 16 > end)
        return XDP_ABORTED;
    int zero = 0;
    struct gen_config *cfg = config.lookup(&zero);
    struct gen_template *t = template.lookup(&zero);
    struct gen_pace *p = pace.lookup(&zero);
    if (!cfg || !t || !p || !cfg->clients)
        return XDP_ABORTED;
    u64 now = bpf_ktime_get_ns();
    if (now >= cfg->until_ns || p->seq >= cfg->limit)
        return XDP_DROP;
    if (cfg->interval_ns) {
        if (now < p->next_ns)
            return XDP_DROP;
        // Behind (a call's setup, a preemption): no catch-up burst beyond 1 ms.
        u64 next = p->next_ns + 1000000 < now ? now : p->next_ns;
        p->next_ns = next + cfg->interval_ns;
    }
    if (bpf_xdp_store_bytes(ctx, 0, t->data, FRAME_LEN))
        return XDP_ABORTED;
    data = (void *)(long)ctx->data;
    end = (void *)(long)ctx->data_end;
    if (data + OPTS_AT + 16 > end)
        return XDP_ABORTED;
    u64 s = p->seq;
    p->seq = s + 1;
    u32 request = cfg->mode == MODE_REQUEST || (cfg->mode == MODE_DORA && (s & 1));
    u32 i = (cfg->mode == MODE_DORA ? s >> 1 : s) % cfg->clients;
    u32 focus = cfg->focus;
    if (cfg->mode == MODE_REQUEST && focus)
        i = s % focus ? 0 : (s / focus) % cfg->clients;
    struct client *c = clients.lookup(&i);
    if (!c)
        return XDP_ABORTED;
    u32 addr = c->address;

    u8 *b = data + 14 + 20 + 8;
    *(u32 *)(b + 4) = (u32)now;                   // xid: the send time, echoed back
    b[28 + 2] = i >> 16;                          // chaddr 02:00:ii:ii:ii:01
    b[28 + 3] = i >> 8;
    b[28 + 4] = i;
    // Options: 53, then 50 (the client's address, once known: a rebooting CPE asks for
    // it in its DISCOVER too), then 54 in a REQUEST; PAD (0) where an option is left out.
    u8 *o = data + OPTS_AT;
    __builtin_memset(o, 0, 15);
    o[0] = 53; o[1] = 1; o[2] = request ? 3 : 1;
    if (addr) {
        o[3] = 50; o[4] = 4;
        __builtin_memcpy(o + 5, &addr, 4);
    }
    if (request) {
        u32 sid = cfg->server_id;
        o[9] = 54; o[10] = 4;
        __builtin_memcpy(o + 11, &sid, 4);
    }
    bump(request ? SENT_REQUEST : SENT_DISCOVER);
    return cfg->action == XDP_PASS ? XDP_PASS : XDP_TX;
}

static __always_inline u32 bucket(u64 ns)
{
    // 4 * floor(log2(ns)) + the next two bits: a quarter octave.
    u32 msb = 0;
#pragma unroll
    for (int sh = 32; sh > 0; sh >>= 1) {
        if (ns >> (msb + sh))
            msb += sh;
    }
    u32 frac = msb >= 2 ? (ns >> (msb - 2)) & 3 : 0;
    u32 b = msb * 4 + frac;
    return b < HIST_BUCKETS ? b : HIST_BUCKETS - 1;
}

int count(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    struct udphdr *udp = (void *)(ip + 1);
    u8 *b = (void *)(udp + 1);
    if ((void *)(b + 240 + 32) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
        ip->protocol != IPPROTO_UDP || udp->source != bpf_htons(67) || b[0] != 2)
        return XDP_PASS;
    if (b[28] != 2 || b[29] != 0 || b[33] != 1)
        return XDP_PASS;  // not one of the generator's clients
    u32 i = (u32)b[30] << 16 | (u32)b[31] << 8 | b[32];
    u32 sent = *(u32 *)(b + 4), yiaddr = *(u32 *)(b + 16);
    u64 now = bpf_ktime_get_ns();
    u64 delay = (u32)((u32)now - sent);

    // Option 53, among the first few options (both servers put it first or nearly).
    u8 o[64] = {};  // Kea's replies are not padded to 300 bytes: look at 32 option bytes
    if (bpf_xdp_load_bytes(ctx, OPTS_AT, o, 32))
        return XDP_PASS;
    u8 type = 0;
    u32 off = 0;
#pragma unroll
    for (int k = 0; k < 6; k++) {
        if (off > 29)
            break;
        u8 code = o[off & 63];
        if (code == 53) {
            type = o[(off + 2) & 63];
            break;
        }
        if (code == 0) {
            off += 1;
            continue;
        }
        if (code == 255)
            break;
        off += 2 + o[(off + 1) & 63];
    }
    int zero = 0;
    struct gen_config *cfg = config.lookup(&zero);
    struct client *c = clients.lookup(&i);
    if (!c || !cfg)
        return XDP_DROP;
    if (type == 2) {
        bump(GOT_OFFER);
        c->address = yiaddr;
        u32 k = bucket(delay);
        u64 *h = delay_offer.lookup(&k);
        if (h)
            *h += 1;
    } else if (type == 5) {
        bump(c->address == yiaddr ? GOT_ACK : GOT_WRONG_ADDRESS);
        if (c->address == yiaddr && now < cfg->until_ns)
            bump(GOT_ACK_IN_WINDOW);
        __sync_fetch_and_add(&c->acked, 1);
        u32 k = bucket(delay);
        u64 *h = delay_ack.lookup(&k);
        if (h)
            *h += 1;
    } else {
        bump(type == 6 ? GOT_NAK : GOT_OTHER);
    }
    return XDP_DROP;
}

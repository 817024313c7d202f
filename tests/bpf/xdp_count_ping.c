// Minimal XDP program for the loader's own test: counts ICMP echo requests, passes everything.
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/icmp.h>

BPF_PERCPU_ARRAY(echo_requests, u64, 1);

int xdp_count_ping(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != htons(ETH_P_IP))
        return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_ICMP || ip->ihl < 5)
        return XDP_PASS;
    struct icmphdr *icmp = (void *)ip + ip->ihl * 4;
    if ((void *)(icmp + 1) > end || icmp->type != ICMP_ECHO)
        return XDP_PASS;
    int zero = 0;
    u64 *n = echo_requests.lookup(&zero);
    if (n)
        *n += 1;
    return XDP_PASS;
}

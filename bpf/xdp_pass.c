// Passes every frame. On a veth pair, native XDP_TX delivers frames only to a peer that runs
// an XDP program of its own; the test sites attach this one to the switch side of the bng's
// access link, where a NIC would need nothing.
#include <uapi/linux/bpf.h>

int xdp_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}

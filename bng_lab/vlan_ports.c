// The lab access node's VLAN ports, as a switch with VLAN filtering has them: a subscriber
// port is untagged, its frames get the port's tags (802.1Q, or QinQ: 802.1ad S-tag over an
// 802.1Q C-tag) on the way in, and only frames on its tags leave it, untagged.
//
// This kernel has neither 802.1Q devices nor bridge VLAN filtering, so these two tc
// programs on each subscriber port do what the bridge would (bng_lab/vlan_ports.py).
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/pkt_cls.h>

struct port_tags {
    __u16 outer_tpid;  // host order: 0x8100 or 0x88a8
    __u16 outer_vid;
    __u16 inner_vid;   // 0: one tag
    __u16 pad;
};

BPF_TABLE("hash", __u32, struct port_tags, port_tags, 256);

// ingress of the port (from the subscriber): tag
int port_in(struct __sk_buff *skb)
{
    __u32 ifindex = skb->ifindex;
    struct port_tags *t = port_tags.lookup(&ifindex);
    if (!t || skb->vlan_present)
        return TC_ACT_SHOT;  // a subscriber's own tags: not on an untagged port
    __u16 tpid = t->outer_tpid, outer = t->outer_vid, inner = t->inner_vid;
    if (inner && bpf_skb_vlan_push(skb, bpf_htons(0x8100), inner))
        return TC_ACT_SHOT;
    if (bpf_skb_vlan_push(skb, bpf_htons(tpid), outer))
        return TC_ACT_SHOT;
    return TC_ACT_OK;
}

// egress of the port (to the subscriber): only its tags, taken off
int port_out(struct __sk_buff *skb)
{
    __u32 ifindex = skb->ifindex;
    struct port_tags *t = port_tags.lookup(&ifindex);
    if (!t || !skb->vlan_present || (skb->vlan_tci & 0x0fff) != t->outer_vid ||
        skb->vlan_proto != bpf_htons(t->outer_tpid))
        return TC_ACT_SHOT;
    __u16 inner = t->inner_vid;
    if (bpf_skb_vlan_pop(skb))  // the inner tag, if any, is now the skb's
        return TC_ACT_SHOT;
    if (inner) {
        if (!skb->vlan_present || (skb->vlan_tci & 0x0fff) != inner)
            return TC_ACT_SHOT;
        if (bpf_skb_vlan_pop(skb))
            return TC_ACT_SHOT;
    } else if (skb->vlan_present) {
        return TC_ACT_SHOT;
    }
    return TC_ACT_OK;
}

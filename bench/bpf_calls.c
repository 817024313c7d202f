// bench/bpf_calls.py: what one call out of an XDP program costs on this machine. Each
// program makes CALLS calls of one kind (the ring output one: each run's events must fit
// the ring, so it is drained between runs); "empty" makes none.
#include <uapi/linux/bpf.h>

struct key16 {
    __u64 a, b;
};
struct event {
    __u64 a, b;
};
struct scratch {
    __u8 bytes[64];
};
BPF_HASH(hash4, __u32, __u64, 64);
BPF_HASH(hash16, struct key16, __u64, 64);
BPF_ARRAY(array4, __u64, 64);
BPF_ARRAY(buf, struct scratch, 1);
BPF_RINGBUF_OUTPUT(ring, 4096);  // pages: 16 MiB, a run of 200,000 outputs

// One call of each kind. BCC rewrites map calls only outside macros, so these are
// functions the BENCH macro below calls, not macro bodies.
#define CALL(name) static __always_inline __u64 name(struct xdp_md *ctx, struct scratch *scr, __u64 s)
CALL(none) { return s; }
CALL(array_lookup)
{
    __u32 k = s & 1;
    __u64 *v = array4.lookup(&k);
    return v ? s + *v : s;
}
CALL(hash_lookup_4)
{
    __u32 k = s & 1;
    __u64 *v = hash4.lookup(&k);
    return v ? s + *v : s;
}
CALL(hash_lookup_16)
{
    struct key16 k = {.a = s & 1};
    __u64 *v = hash16.lookup(&k);
    return v ? s + *v : s;
}
CALL(ktime_get_coarse_ns) { return s + bpf_ktime_get_coarse_ns(); }
CALL(jiffies64) { return s + bpf_jiffies64(); }  // inlined by the verifier
CALL(csum_diff_64) { return s + bpf_csum_diff(0, 0, (__be32 *)scr->bytes, 64, 0); }
CALL(xdp_load_bytes_64) { return s + bpf_xdp_load_bytes(ctx, 0, scr->bytes, 64); }
CALL(ringbuf_output_16)
{
    struct event e = {.a = s};
    return s + ring.ringbuf_output(&e, sizeof(e), 0);
}

static __always_inline struct scratch *scratch(void)
{
    __u32 zero = 0;
    return buf.lookup(&zero);
}

#define BENCH(prog, call, n)                                                               \
    int prog(struct xdp_md *ctx)                                                           \
    {                                                                                      \
        __u64 s = ctx->data_end - ctx->data;                                               \
        struct scratch *scr = scratch();                                                   \
        if (!scr)                                                                          \
            return XDP_ABORTED;                                                            \
        _Pragma("unroll") for (int i = 0; i < (n); i++) s = call(ctx, scr, s);             \
        return s == 12345 ? XDP_DROP : XDP_PASS; /* keeps s, and so every call, alive */   \
    }

BENCH(empty, none, 1)
BENCH(p_array_lookup, array_lookup, CALLS)
BENCH(p_hash_lookup_4, hash_lookup_4, CALLS)
BENCH(p_hash_lookup_16, hash_lookup_16, CALLS)
BENCH(p_ktime_get_coarse_ns, ktime_get_coarse_ns, CALLS)
BENCH(p_jiffies64, jiffies64, CALLS)
BENCH(p_csum_diff_64, csum_diff_64, CALLS)
BENCH(p_xdp_load_bytes_64, xdp_load_bytes_64, CALLS)
BENCH(p_ringbuf_output_16, ringbuf_output_16, 1)

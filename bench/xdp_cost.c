// bench/xdp_cost.py: the fast path measured with BPF_PROG_TEST_RUN on a valid request every
// repeat. The kernel reuses one buffer across repeats and the fast path rewrites it into its
// reply, so each repeat first restores the request (bench_restore alone is the baseline that
// bench/xdp_cost.py subtracts).
//
// bench/xdp_cost.py compiles bpf/access_ingress.c with this file appended, as one file: BCC
// rewrites map calls in the main file only, so an #include of the program would not do.

struct bench_frame {
    __u32 len;
    __u8 data[512];
};
BPF_ARRAY(bench_frame, struct bench_frame, 1);

static __always_inline int restore(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct bench_frame *f = bench_frame.lookup(&zero);
    if (!f)
        return -1;
    __u32 len = f->len;
    if (len < 64 || len > 512)
        return -1;
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    int delta = (int)len - (int)(end - data);
    if (bpf_xdp_adjust_tail(ctx, delta))
        return -1;
    len -= 1;
    asm volatile("%0 &= 511" : "+r"(len));  // 1..512, on the register the helper sees
    len += 1;
    return bpf_xdp_store_bytes(ctx, 0, f->data, len);
}

int bench_restore(struct xdp_md *ctx)
{
    return restore(ctx) ? XDP_ABORTED : XDP_TX;
}

int bench_reply(struct xdp_md *ctx)
{
    return restore(ctx) ? XDP_ABORTED : serve(ctx);
}

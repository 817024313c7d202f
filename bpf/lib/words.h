// Moving words: loads, stores, copies and the Internet checksum's fold, each inlined.
// No maps, no helpers: usable from any program and any hook.
#pragma once

static __always_inline __u16 fold(__u64 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return ~s & 0xffff;
}

// Zero n bytes (a multiple of 8); a large memset would become a call.
static __always_inline void zero(__u8 *p, const int n)
{
#pragma unroll
    for (int i = 0; i < n / 8; i++)
        *(__u64 *)(p + i * 8) = 0;
}

// Word access at any byte offset, one instruction each: the verifier allows unaligned
// access to packet and map memory (no strict alignment on x86 or arm64), where
// __builtin_memcpy would assume alignment 1 and move every word a byte at a time.
static __always_inline __u64 load64(const void *p)
{
    return *(const __u64 *)p;
}

static __always_inline __u32 load32(const void *p)
{
    return *(const __u32 *)p;
}

static __always_inline void store64(void *p, __u64 v)
{
    *(__u64 *)p = v;
}

// An option with a 4-byte value (code, 4, value) in two stores; memory is little-endian.
static __always_inline void put_option4(__u8 *p, __u8 code, __be32 value)
{
    *(__u16 *)p = code | 4 << 8;
    *(__u32 *)(p + 2) = value;
}

// A MAC address: 6 bytes as a 4- and a 2-byte word.
static __always_inline void copy_mac(void *dst, const void *src)
{
    *(__u32 *)dst = *(const __u32 *)src;
    *(__u16 *)(dst + 4) = *(const __u16 *)(src + 4);
}

// Copy `words` 8-byte words of scratch memory at a masked offset, keeping the first `keep`
// bytes and zeroing the rest (byte order in memory is the wire's, little-endian words).
static __always_inline void copy_prefix(__u8 *dst, const __u8 *src, const int words, __u32 keep)
{
#pragma unroll
    for (int w = 0; w < words; w++) {
        __u64 x = load64(src + w * 8);
        if (keep <= w * 8)
            x = 0;
        else if (keep < w * 8 + 8)
            x &= (1ULL << ((keep - w * 8) * 8)) - 1;
        store64(dst + w * 8, x);
    }
}

static __always_inline int same(const __u8 *a, const __u8 *b, const int words)
{
    __u64 diff = 0;
#pragma unroll
    for (int w = 0; w < words; w++)
        diff |= *(__u64 *)(a + w * 8) ^ *(__u64 *)(b + w * 8);
    return diff == 0;
}

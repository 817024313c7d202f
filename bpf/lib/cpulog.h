// Per-CPU logs that programs write and the agent reads mmapped: the fast path's refresh log
// (lib/dhcp.h) and the flow log (lib/flow.h); the reader is
// bng_operator/agent/dataplane/cpulog.py. Each CPU has `len` entries of the entries array,
// from cpu * len, and a head: a program writes its CPU's next entry in place, then moves the
// head. One writer a CPU: XDP and tc programs run with bottom halves off, so two never run
// at once on one CPU. The entry's stores reach the reader before the head's by x86's store
// order (the compiler barrier keeps them in that order in the program).
#pragma once

#ifndef MAX_CPUS
#define MAX_CPUS 64  // the loader defines it: the machine's possible CPUs
#endif

// Where a CPU's next entry goes, given its head (`len` a power of two).
static __always_inline __u32 cpulog_slot(__u32 cpu, __u64 head, __u32 len)
{
    return cpu * len + (head & (len - 1));
}

// The entry written: the reader's once the head passes it.
static __always_inline void cpulog_publish(__u64 *head, __u64 next)
{
    asm volatile("" ::: "memory");
    *(volatile __u64 *)head = next;
}

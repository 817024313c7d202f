// Every map of the access interface's programs, declared once. Sizes and pin paths come
// from cflags.
//
// With PIN_DIR set, the maps live in that bpffs directory (one per program generation), so
// a restarted or upgraded agent finds them, and the program attached to the interface keeps
// using them while no agent runs. The refresh log lives in PIN_ROOT: it outlasts program
// generations, so an upgrade still reads what the previous program logged.
#pragma once
#include "lib/dhcp.h"

#ifndef MAX_SUBSCRIBERS
#define MAX_SUBSCRIBERS 100000
#endif
#ifndef MAX_SUBNETS
#define MAX_SUBNETS 1024
#endif

#ifdef PIN_DIR
#define BNG_TABLE(type, k, v, name, n) BPF_TABLE_PINNED(type, k, v, name, n, PIN_DIR "/" #name)
#else
#define BNG_TABLE(type, k, v, name, n) BPF_TABLE(type, k, v, name, n)
#endif

BNG_TABLE("hash", struct subscriber_key, struct subscriber_lease, subscribers, MAX_SUBSCRIBERS);
BNG_TABLE("hash", struct circuit_key, struct subscriber_lease, circuits, MAX_SUBSCRIBERS);
// Arrays, not hashes: the verifier inlines an array lookup, where a hash lookup is a call
// and a jhash (~25 ns a lookup on a machine with return-thunk mitigations).
BNG_TABLE("array", __u32, struct subnet_options, subnet_options, MAX_SUBNETS);
BNG_TABLE("array", __u32, struct interface_config, interfaces, INTERFACE_SLOTS);
BNG_TABLE("percpu_array", int, __u64, counters, CNT_MAX);
BPF_PERCPU_ARRAY(parse_scratch, struct parse_state, 1);

// The refresh log outlasts program generations: its layout is
// fixed (a change needs new names). Indexed by CPU, mmapped by the agent.
#ifndef MAX_CPUS
#define MAX_CPUS 64
#endif
#ifdef PIN_DIR
BPF_TABLE_PINNED("array", u32, struct refresh_log_head, refresh_heads, MAX_CPUS,
                 PIN_ROOT "/refresh_heads", BPF_F_MMAPABLE);
BPF_TABLE_PINNED("array", u32, struct lease_refresh, refresh_log, MAX_CPUS * REFRESH_LOG_LEN,
                 PIN_ROOT "/refresh_log", BPF_F_MMAPABLE);
#else
BPF_F_TABLE("array", u32, struct refresh_log_head, refresh_heads, MAX_CPUS, BPF_F_MMAPABLE);
BPF_F_TABLE("array", u32, struct lease_refresh, refresh_log, MAX_CPUS * REFRESH_LOG_LEN,
            BPF_F_MMAPABLE);
#endif
BPF_ARRAY(clock_sample, struct clock_sample, 1);
BNG_TABLE("array", __u32, struct agent_heartbeat, heartbeat, 1);


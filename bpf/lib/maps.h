// Every map of the access interface's programs, declared once. Sizes come from cflags.
//
// The agent pins the maps itself (dataplane/fastpath.py PINNED_MAPS), one bpffs directory per
// program generation, so a restarted or upgraded agent finds them, and the program attached
// to the interface keeps using them while no agent runs. The refresh log is pinned above the
// generations: an upgrade still reads what the previous program logged. Not BCC's
// BPF_TABLE_PINNED: it re-opens a pin by map id, which takes CAP_SYS_ADMIN.
#pragma once
#include "lib/cpulog.h"
#include "lib/dhcp.h"

#ifndef MAX_SUBSCRIBERS
#define MAX_SUBSCRIBERS 100000
#endif
#ifndef MAX_SUBNETS
#define MAX_SUBNETS 1024
#endif

BPF_TABLE("hash", struct subscriber_key, struct subscriber_lease, subscribers, MAX_SUBSCRIBERS);
BPF_TABLE("hash", struct circuit_key, struct subscriber_lease, circuits, MAX_SUBSCRIBERS);
// Arrays, not hashes: the verifier inlines an array lookup, where a hash lookup is a call
// and a jhash (~25 ns a lookup on a machine with return-thunk mitigations).
BPF_TABLE("array", __u32, struct subnet_options, subnet_options, MAX_SUBNETS);
BPF_TABLE("array", __u32, struct interface_config, interfaces, INTERFACE_SLOTS);
BPF_TABLE("percpu_array", int, __u64, counters, CNT_MAX);
BPF_PERCPU_ARRAY(parse_scratch, struct parse_state, 1);
// Why this CPU's last packet went to the slow path: its flow event's reason (lib/flow.h).
BPF_PERCPU_ARRAY(flow_outcome, __u32, 1);

// The refresh log outlasts program generations: its layout is
// fixed (a change needs new names). A per-CPU log (lib/cpulog.h), mmapped by the agent.
BPF_F_TABLE("array", u32, struct refresh_log_head, refresh_heads, MAX_CPUS, BPF_F_MMAPABLE);
BPF_F_TABLE("array", u32, struct lease_refresh, refresh_log, MAX_CPUS * REFRESH_LOG_LEN,
            BPF_F_MMAPABLE);
BPF_ARRAY(clock_sample, struct clock_sample, 1);
BPF_TABLE("array", __u32, struct agent_heartbeat, heartbeat, 1);


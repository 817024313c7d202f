// Every map of the XDP DHCP fast path, declared once. Sizes come from cflags.
#pragma once
#include "lib/dhcp.h"

#ifndef MAX_SUBSCRIBERS
#define MAX_SUBSCRIBERS 100000
#endif
#ifndef MAX_POOLS
#define MAX_POOLS 256
#endif

BPF_HASH(subscribers, struct subscriber_key, struct subscriber_lease, MAX_SUBSCRIBERS);
BPF_ARRAY(pool_options, struct pool_option_set, MAX_POOLS);
BPF_HASH(interfaces, __u32, struct interface_config, 64);
BPF_PERCPU_ARRAY(counters, __u64, CNT_MAX);
BPF_PERCPU_ARRAY(parse_scratch, struct parse_state, 1);

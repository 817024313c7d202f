// NAT44 / CGNAT on the uplink (bpf/nat44.c): layouts shared with userspace, and every map,
// declared once. Mirrored in bng_operator/agent/dataplane/nat.py; tests/bpf/test_nat.py
// checks that both sides agree. docs/nat.md describes the design.
//
// Byte order: addresses and ports in keys and mappings are in network order (as in the
// packet); block ports and timeouts, which only the agent writes, are in host order.
#pragma once

#ifndef MAX_SUBSCRIBERS
#define MAX_SUBSCRIBERS 100000
#endif
// Mappings of each direction. Sized by the agent above the node's port capacity (public
// ports x protocols): these are plain hashes, never LRU, so a live mapping is only ever
// removed by its timeout. Allocated as they are made (BPF_F_NO_PREALLOC).
#ifndef NAT_MAX_MAPPINGS
#define NAT_MAX_MAPPINGS 196608
#endif
// (public endpoint, remote) permissions of the address(-and-port)-dependent filtering pools.
#ifndef NAT_MAX_FILTERS
#define NAT_MAX_FILTERS 196608
#endif
// Outbound mappings of recently active flows, copied for the steady packet's lookup
// (nat_recent, below).
#ifndef NAT_MAX_RECENT
#define NAT_MAX_RECENT 65536
#endif
// How long nat_out trusts a copy in nat_recent from when it read the mapping (and
// refreshed the mapping's time): an ended mapping's copy is never used longer, and a
// mapping's time lags its flow's last packet by at most this, far below any timeout
// (60 s at least).
#define NAT_RECHECK_NS 1000000000ULL
#ifndef NAT_MAX_FRAGMENTS
#define NAT_MAX_FRAGMENTS 8192
#endif
// Blocks a binding can hold: a power of two (NATPool blocksPerSubscriber is at most 64).
#ifndef NAT_MAX_BLOCKS
#define NAT_MAX_BLOCKS 4
#endif
_Static_assert((NAT_MAX_BLOCKS & (NAT_MAX_BLOCKS - 1)) == 0 && NAT_MAX_BLOCKS <= 64,
               "NAT_MAX_BLOCKS: a power of two, at most 64");
// Ports tried, from a random one in the blocks onwards, before a new flow is refused; then
// ports of expired mappings looked for, from another random one, when the collector is late.
#ifndef NAT_PROBES
#define NAT_PROBES 128
#endif
#ifndef NAT_TAKEOVER_PROBES
#define NAT_TAKEOVER_PROBES 8
#endif
#ifndef NAT_MAX_ADDRESSES
#define NAT_MAX_ADDRESSES 4096
#endif
#define NAT_MAX_POOLS 64
#define NAT_MAX_INSIDE 256
#define NAT_MAX_EXHAUSTED 4096
// At most one ICMP "administratively prohibited" per subscriber per interval.
#define NAT_ICMP_INTERVAL_NS 100000000ULL

// A pool's filtering behaviour (NATPool filteringBehavior, RFC 4787 section 5).
enum nat_filtering {
    NAT_FILTER_ENDPOINT_INDEPENDENT = 0,
    NAT_FILTER_ADDRESS_DEPENDENT,
    NAT_FILTER_ADDRESS_AND_PORT_DEPENDENT,
};

// nat_mapping.tcp: what one direction of a TCP mapping has seen. Established: a SYN each
// way and no FIN or RST; else transitory (RFC 5382). A new SYN clears its side's FIN/RST.
#define NAT_TCP_SYN 0x01
#define NAT_TCP_FIN 0x02
#define NAT_TCP_RST 0x04
// nat_mapping.flags (inbound entries): the mapping ended and its public port is held
// (NATPool timeouts.hold) before another flow may take it; nothing passes it meanwhile.
#define NAT_F_HELD 0x01

// A NATed subscriber, by inside address (network order): its public address and its
// blocks of ports there, written by the agent when the session binds (port-block mode:
// allocated; deterministic mode: computed from the inside address by the RFC 7422
// formula, docs/nat.md). Block j holds ports first[j] .. first[j] + block_size - 1; all of
// a pool's blocks have its portsPerBlock.
struct nat_binding {
    __be32 public_addr;
    __u16 pool;            // index into nat_pools
    __u16 block_size;
    __u8 nblocks;          // first[0 .. nblocks - 1] are used
    __u8 pad[3];
    __u16 first[NAT_MAX_BLOCKS];
};

// A pool's behaviour, by pool index. Timeouts in seconds.
struct nat_pool {
    __u8 filtering;        // enum nat_filtering
    __u8 pad[3];
    __u32 udp;
    __u32 tcp_established;
    __u32 tcp_transitory;
    __u32 icmp;
    __u32 hold;            // a port whose mapping ended waits this long before reuse
};

// A public address served by this node, and its pool.
struct nat_address {
    __u32 pool;
};

// An endpoint: (address, port, protocol); for ICMP echo the port is the identifier.
// The outbound key is the inside endpoint (endpoint-independent mapping, RFC 4787 REQ-1:
// the destination is not part of it); the inbound key is the public endpoint.
struct nat_endpoint {
    __be32 addr;
    __be16 port;
    __u8 proto;
    __u8 pad;
};

// One direction of a mapping: the endpoint it translates to, and what it has seen that
// way. Each program writes only its own direction's entry; the collector reads both.
struct nat_mapping {
    __be32 addr;
    __be16 port;
    __u8 flags;            // NAT_F_*
    __u8 tcp;              // NAT_TCP_* seen this way
    __u64 last_seen_ns;    // bpf_ktime_get_coarse_ns (CLOCK_MONOTONIC)
};

// A remote allowed to reach a public endpoint (address-dependent filtering: remote_port 0),
// added by outbound traffic. The value is its last-seen time.
struct nat_filter_key {
    __be32 public_addr;
    __be32 remote_addr;
    __be16 public_port;
    __be16 remote_port;
    __u8 proto;
    __u8 pad[3];
};

// The fragments of one datagram, by its original header: later fragments carry no ports,
// and are translated from what the first one found.
#define NAT_FRAG_OUT 0
#define NAT_FRAG_IN 1
struct nat_frag_key {
    __be32 saddr;
    __be32 daddr;
    __be16 id;
    __u8 proto;
    __u8 dir;              // NAT_FRAG_OUT / NAT_FRAG_IN
};

struct nat_frag {
    __be32 addr;           // the address that replaces the source (out) or destination (in)
    __u32 pad;
    __u64 seen_ns;
};

// What nat_out's fast path needs to know of the node, in one entry that spares it
// lookups. Both are kept by the agent, and only ever widened (never narrowed: a wide one
// costs a lookup, never a wrong answer):
// - lo .. hi: the span of the addresses in nat_addresses, in host order (hi 0: none yet).
//   A destination outside it is none of ours, and is not looked up to hairpin it;
// - filters: 1 once any pool filters (address(-and-port)-dependent). While 0, a mapped
//   packet's pool is not looked up (endpoint-independent lets every remote in).
struct nat_node {
    __u32 lo;
    __u32 hi;
    __u8 filters;
    __u8 pad[3];
};

// A copy of an outbound mapping (nat_recent): the public endpoint, and when nat_out last
// read the mapping itself.
struct nat_recent {
    __be32 addr;
    __be16 port;
    __u16 pad;
    __u64 checked_ns;
};

// A subscriber whose blocks were full, by inside address: the agent reads these to give it
// another block (up to blocksPerSubscriber) and to report exhaustion.
struct nat_exhaustion {
    __u64 count;           // new flows refused
    __u64 last_ns;
    __u64 icmp_ns;         // the last ICMP sent back (rate limit)
};

// An inside prefix (LPM key): a source in one with no binding is dropped, never leaked.
struct nat_prefix {
    __u32 prefixlen;
    __be32 addr;
};

// What the NAT did with a packet (index into nat_stats). Each packet is counted once by
// its verdict; the events (NEW_MAPPING, TAKEN_OVER, HAIRPIN, ICMP_SENT, FILTER_FULL) are
// counted besides.
enum nat_stat {
    NAT_OUT_TRANSLATED = 0,    // egress: translated
    NAT_IN_TRANSLATED,         // ingress: translated
    NAT_OUT_PASSED,            // egress: from no binding and no inside prefix (the node's own,
                               //   subscribers with public addresses): passed as it is
    NAT_IN_PASSED,             // ingress: not to a public address of ours: passed
    NAT_NOT_IPV4,              // either way: not IPv4: passed
    NAT_NO_BINDING,            // dropped: from an inside prefix, with no binding
    NAT_NO_MAPPING,            // dropped: to a public endpoint with no mapping
    NAT_FILTERED,              // dropped: by the pool's filtering behaviour
    NAT_BLOCK_FULL,            // dropped: no free port in the subscriber's blocks
    NAT_MAP_FULL,              // dropped: the mapping table is full
    NAT_FRAGMENT_UNKNOWN,      // dropped: a later fragment whose first was not seen
    NAT_ICMP_ERROR_UNKNOWN,    // dropped: an ICMP error about no mapping of ours
    NAT_MALFORMED,             // dropped: truncated or inconsistent headers
    NAT_UNSUPPORTED,           // dropped: a protocol or an ICMP type that is not translated
    NAT_WRITE_ERROR,           // dropped: the kernel refused a rewrite
    NAT_INTERNAL,              // dropped: a tail call failed (nat_progs not filled)
    NAT_NEW_MAPPING,           // event: a mapping was made
    NAT_TAKEN_OVER,            // event: ...on a port whose mapping had expired
    NAT_ICMP_ERROR,            // event: an ICMP error translated (outer and inner headers)
    NAT_FRAGMENT,              // event: a later fragment translated
    NAT_HAIRPIN,               // event: to a public endpoint of ours, sent back in
    NAT_ICMP_SENT,             // event: destination unreachable (13) sent for a full block
    NAT_FILTER_FULL,           // event: no room to allow a remote (its replies are filtered)
    NAT_STATS_MAX,
};

BPF_TABLE("hash", __be32, struct nat_binding, nat_bindings, MAX_SUBSCRIBERS);
BPF_TABLE("array", __u32, struct nat_pool, nat_pools, NAT_MAX_POOLS);
BPF_TABLE("hash", __be32, struct nat_address, nat_addresses, NAT_MAX_ADDRESSES);
BPF_TABLE("array", __u32, struct nat_node, nat_node, 1);
BPF_F_TABLE("lpm_trie", struct nat_prefix, __u8, nat_inside, NAT_MAX_INSIDE, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct nat_endpoint, struct nat_mapping, nat_outbound, NAT_MAX_MAPPINGS,
            BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct nat_endpoint, struct nat_mapping, nat_inbound, NAT_MAX_MAPPINGS,
            BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct nat_filter_key, __u64, nat_filters, NAT_MAX_FILTERS,
            BPF_F_NO_PREALLOC);
// The layout of the three tables above, as the agent hashed it (their structs and flags):
// a new generation (other table sizes, other code) carries their entries over from the old
// one only when this matches, so flows survive a resize, a restart and an upgrade.
BPF_TABLE("array", __u32, __u64, nat_layout, 1);
// Recently active flows' outbound mappings, by inside endpoint: what a steady packet looks
// up first. The mapping tables are sized for every public port, and their bucket arrays
// (32 MB each for 516k ports) miss the TLB on nearly every packet of many flows; this
// one's (1 MB at 64k entries) does not: ~70 ns a packet less with 25,600 flows. Only a
// copy: the agent deletes it with its mapping, and nat_out reads the mapping again after
// NAT_RECHECK_NS. Full, it leaves new flows uncopied (they take the mappings' path).
BPF_F_TABLE("hash", struct nat_endpoint, struct nat_recent, nat_recent, NAT_MAX_RECENT,
            BPF_F_NO_PREALLOC);
// Fragments and exhaustion are hints, not state: LRU may drop the oldest.
BPF_TABLE("lru_hash", struct nat_frag_key, struct nat_frag, nat_fragments, NAT_MAX_FRAGMENTS);
BPF_TABLE("lru_hash", __be32, struct nat_exhaustion, nat_exhausted, NAT_MAX_EXHAUSTED);
BPF_TABLE("percpu_array", __u32, __u64, nat_stats, NAT_STATS_MAX);
// The programs nat_out and nat_new tail-call (the agent fills it when it loads them).
#define NAT_PROG_OUT 0
#define NAT_PROG_NEW 1
BPF_TABLE("prog", __u32, __u32, nat_progs, 2);

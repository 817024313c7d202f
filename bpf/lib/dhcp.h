// DHCP constants and the layout of every struct shared with userspace.
// Mirrored in bng_operator/agent/dataplane/fastpath.py; tests/bpf/test_fastpath.py checks
// that both sides agree.
#pragma once

#define DHCP_SERVER_PORT 67
#define DHCP_CLIENT_PORT 68
#define BOOTP_FIXED 236            // BOOTP fields before the magic cookie
#define DHCP_MAGIC 0x63825363
#define REPLY_OPTIONS_LEN 176      // room for a fast-path reply's options (at most 164 used)
#define MIN_REPLY_DHCP_LEN 300     // RFC 1542: shorter BOOTP messages may be dropped
// The options of the shortest reply, in whole 8-byte words (the program copies words).
#define MIN_REPLY_OPTIONS_LEN ((MIN_REPLY_DHCP_LEN - BOOTP_FIXED - 4 + 7) & ~7)
#define MAX_RELAY_AGENT_LEN 62     // longest option 82 the fast path echoes (value bytes)
#define MAX_CLIENT_ID_LEN 32       // longest option 61 the fast path compares
#define MAX_DNS 4                  // option 6 servers in a fast-path reply
#define MAX_DOMAIN_LEN 32          // option 15 in a fast-path reply
#define OPTIONS_COPY 512           // request option bytes walked; longer lists: slow path
#define OPTION_WALK_MAX 24         // options looked at before giving up (-> slow path)
#define INTERFACE_SLOTS 256        // the interfaces array: an interface sits in one of the
#define INTERFACE_PROBES 4         //   INTERFACE_PROBES slots from ifindex % INTERFACE_SLOTS

// Why a frame went to the slow path (index into the counters map).
enum fastpath_counter {
    CNT_OFFER = 0,
    CNT_ACK,
    CNT_PASS_NOT_DHCP,
    CNT_PASS_MALFORMED,
    CNT_PASS_MISS,
    CNT_PASS_EXPIRED,
    CNT_PASS_WRONG_ADDRESS,
    CNT_PASS_CHANGED,              // the request differs from the one the lease was granted on
    CNT_PASS_OTHER_TYPE,
    CNT_PASS_LAYOUT,
    CNT_PASS_NO_INTERFACE,
    CNT_PASS_NO_SUBNET,
    CNT_PASS_NO_ROOM,              // the frame's buffer could not grow to the reply
    CNT_DROP,
    CNT_REFRESH_LOST,              // an ACK whose new expiry could not be queued to userspace
    CNT_PASS_NO_AGENT,             // no agent beat within its window: no authority to answer
    CNT_PASS_UNTRUSTED_82,         // option 82 on an interface not marked as trusting it
    CNT_MAX,
};

// Subscribers identified by their CPE: MAC plus the outer VLAN.
struct subscriber_key {
    __u8 mac[6];
    __u16 vlan;                    // outer VLAN id, 0 when untagged
};

// Subscribers identified by their line: the access node's option 82, hashed. The lease
// holds the option's bytes and the fast path compares them in full, so two lines whose
// hashes collide go to the slow path, never to each other's lease. A short key is what
// makes the lookup cheap: the kernel hashes and compares 16 bytes instead of 68.
struct circuit_key {
    __u64 hash;                    // circuit_hash() of the relay bytes below
    __u16 vlan;
    __u16 pad[3];
};

// The circuit key's hash: option 82 as it came (code, length, value), zero-padded to
// MAX_RELAY_AGENT_LEN + 2 bytes and read as little-endian 64-bit words. Mirrored by
// circuit_hash() in bng_operator/agent/fastpath/entries.py.
#define CIRCUIT_HASH_MUL 0x9E3779B97F4A7C15ULL
static __always_inline __u64 circuit_hash(const __u8 *relay)
{
    __u64 h = 0;
#pragma unroll
    for (int w = 0; w < (MAX_RELAY_AGENT_LEN + 2) / 8; w++) {
        h = (h ^ *(const __u64 *)(relay + w * 8)) * CIRCUIT_HASH_MUL;
        h ^= h >> 32;
    }
    return h;
}

// One lease the fast path may answer, with the request it was granted on: a request that
// differs (client id, option 82, relay) goes to the slow path, which may classify it anew.
struct subscriber_lease {
    __u32 address;                 // network byte order, as every address here
    __u32 server_id;
    __u64 expires;                 // in jiffies (bpf_jiffies64); refreshed by the fast path on ACK
    __u64 lease_jiffies;           // lease_seconds in jiffies: the agent knows the kernel's HZ
    __u32 lease_seconds;
    __u32 subnet;                  // network address of its subnet
    __u32 giaddr;                  // the relay it came through, 0 if direct
    __u8 client_id_len;            // option 61 length in that request, 0 if it had none
    __u8 pad;
    __u16 subnet_slot;             // its subnet's index in subnet_options
    __u8 client_id[MAX_CLIENT_ID_LEN];
    __u8 relay[MAX_RELAY_AGENT_LEN + 2];   // its option 82 (code, length, value), or zeros;
                                           // for a circuit entry, the bytes its key hashes
};

// The reply options of one subnet, in an array (an inlined lookup, no hash): the lease
// names the slot, and the slot names its subnet, so a slot reused for another subnet
// sends the lease to the slow path, never another subnet's options.
struct subnet_options {
    __u32 network;                 // 0: a free slot
    __u32 subnet_mask;
    __u32 router;
    __u32 broadcast;
    __u32 dns[MAX_DNS];
    __u8 dns_count;                // 0..MAX_DNS
    __u8 domain_len;               // 0..MAX_DOMAIN_LEN
    __u8 pad[2];
    __u8 domain[MAX_DOMAIN_LEN];
};

// Logged for the agent on every fast-path ACK, to persist the new expiry (BCC knows u32/u64
// in map types, not __u32/__u64). The log outlasts program
// generations, so an entry says which clock its expiry is on.
enum refresh_clock {
    REFRESH_CLOCK_MONOTONIC_NS = 0,  // programs before the jiffies clock (their pad was 0)
    REFRESH_CLOCK_JIFFIES = 1,
};
struct lease_refresh {
    u32 address;
    u32 clock;                     // enum refresh_clock
    u64 expires;
};

// The refresh log, a per-CPU log (lib/cpulog.h): REFRESH_LOG_LEN entries a CPU in the
// refresh_log array and a head a CPU in refresh_heads; the agent reads both maps mmapped,
// and keeps where it got to in tail. No helper call (a ring buffer output costs ~35 ns here). An entry overwritten
// before the agent read it is counted lost by the agent.
#define REFRESH_LOG_LEN 16384      // a power of two: 30 s of a storm of 500 ACK/s a CPU
struct refresh_log_head {
    __u64 head;                    // refreshes this CPU has logged, ever
    __u64 tail;                    // the agent's: how many of them it has read
};

// The agent's heartbeat, in jiffies. The program answers only while the agent beat within
// `window`: a program left behind by an agent that is gone (node unlabelled, chart
// uninstalled, agent crash-looping) stops extending leases whose addresses the operator will
// give to another node. Zero (no agent ever beat): nothing is answered.
struct agent_heartbeat {
    __u64 beat;                    // bpf_jiffies64() when the agent last beat
    __u64 window;                  // how long a beat gives authority, in jiffies
};

// bpf_jiffies64() and CLOCK_MONOTONIC read at one instant, for the agent to convert expiries.
struct clock_sample {
    __u64 jiffies;
    __u64 monotonic_ns;
};

// What the option walk found, in a per-CPU map: every walk path reaches the reply-building
// code in the same verifier state, and the options are copied here once so the walk reads
// memory with masked offsets instead of re-checking the packet end at every step.
struct parse_state {
    __u32 l3;                      // offset of the IPv4 header
    __u32 off82, len82;            // option 82, relative to the options start
    __u32 off61, len61;            // option 61
    __u32 requested, server_id;    // options 50 and 54
    __u16 vlan;
    __u8 msg_type;
    __u8 seen;                     // options already met (a repeated one: slow path)
    __u8 reply[REPLY_OPTIONS_LEN]; // the reply's options, assembled (the stack is too small)
    __u8 opts[OPTIONS_COPY + 64];  // +64: a masked offset plus a value never runs past
};

// An access interface, in an array indexed from its ifindex (see INTERFACE_SLOTS).
struct interface_config {
    __u32 ifindex;                 // 0: a free slot
    __u8 mac[6];
    __u8 trust82;                  // 1: its access node inserts option 82 (RFC 3046 §2.1)
    __u8 pad;
};

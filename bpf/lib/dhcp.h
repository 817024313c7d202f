// DHCP constants and the layout of every struct shared with userspace.
// Mirrored in bng_operator/agent/dataplane/fastpath.py; tests/bpf/test_fastpath.py checks
// that both sides agree.
#pragma once

#define DHCP_SERVER_PORT 67
#define DHCP_CLIENT_PORT 68
#define BOOTP_FIXED 236            // BOOTP fields before the magic cookie
#define DHCP_MAGIC 0x63825363
#define REPLY_OPTIONS_LEN 128      // fixed options area of a fast-path reply
#define REPLY_DHCP_LEN (BOOTP_FIXED + 4 + REPLY_OPTIONS_LEN)   // 368: >= 300 (RFC 1542)
#define MAX_RELAY_AGENT_LEN 62     // longest option 82 the fast path echoes
#define OPTION_WALK_MAX 8         // options looked at before giving up (-> slow path)

// Why a frame went to the slow path (index into the counters map).
enum fastpath_counter {
    CNT_OFFER = 0,
    CNT_ACK,
    CNT_PASS_NOT_DHCP,
    CNT_PASS_MALFORMED,
    CNT_PASS_MISS,
    CNT_PASS_EXPIRED,
    CNT_PASS_WRONG_ADDRESS,
    CNT_PASS_OTHER_TYPE,
    CNT_PASS_LAYOUT,
    CNT_PASS_NO_INTERFACE,
    CNT_DROP,
    CNT_MAX,
};

struct subscriber_key {
    __u8 mac[6];
    __u16 vlan;                    // outer VLAN id, 0 when untagged
};

struct subscriber_lease {
    __u32 address;                 // network byte order
    __u32 server_id;               // network byte order
    __u64 expires_ns;              // CLOCK_BOOTTIME; refreshed by the fast path on ACK
    __u32 lease_seconds;
    __u32 pool;                    // index into pool_options
};

struct pool_option_set {
    __u32 subnet_mask;             // network byte order, as every address here
    __u32 router;
    __u32 dns[2];
    __u32 dns_count;               // 0..2
};

// What the option walk found; goes through a per-CPU map so that every walk path reaches the
// reply-building code in the same verifier state (map reads are not tracked precisely).
struct parse_state {
    __u32 l3;                      // offset of the IPv4 header
    __u32 off82, len82;            // option 82, relative to the options start
    __be32 requested, server_id;   // options 50 and 54
    __u16 vlan;
    __u8 msg_type;
    __u8 pad;
};

struct interface_config {
    __u8 mac[6];
    __u16 pad;
};

"""The names of the programs' counters, in their C enums' order, without BCC: the flow
decoder (agent/observe) names a kernel event's reason with them. tests/bpf holds each to
its header."""

# enum fastpath_counter (bpf/lib/dhcp.h)
DHCP_COUNTERS = ("offer", "ack", "pass_not_dhcp", "pass_malformed", "pass_miss",
                 "pass_expired", "pass_wrong_address", "pass_changed", "pass_other_type",
                 "pass_layout", "pass_no_interface", "pass_no_subnet", "pass_no_room", "drop",
                 "refresh_lost", "pass_no_agent", "pass_untrusted_82")
# enum qos_stat (bpf/lib/qos.h)
QOS_STATS = ("down_shaped", "down_not_ipv4", "down_unknown", "up_shaped", "up_not_ipv4",
             "up_no_ifb", "up_dhcp", "down_no_session", "spoof_source", "spoof_mac",
             "spoof_vlan", "spoof_not_ipv4", "arp_answered", "arp_passed", "arp_dropped")
# enum nat_stat (bpf/lib/nat.h)
NAT_STATS = ("out_translated", "in_translated", "out_passed", "in_passed", "not_ipv4",
             "no_binding", "no_mapping", "filtered", "block_full", "map_full",
             "fragment_unknown", "icmp_error_unknown", "malformed", "unsupported",
             "write_error", "internal", "new_mapping", "taken_over", "icmp_error", "fragment",
             "hairpin", "icmp_sent", "filter_full")

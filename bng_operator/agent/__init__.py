"""Node agent: DHCP slow path, dataplane reconciler, subscriber reporting."""

"""Flow observation: what the programs and the slow path did with each packet, kept for a
while and served through Hubble's Observer API."""

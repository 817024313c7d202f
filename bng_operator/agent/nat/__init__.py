"""NAT44 / CGNAT as a session feature: port blocks, their log, and the kernel's bindings."""

"""bng: a Kubernetes-native, eBPF-accelerated Broadband Network Gateway."""

__version__ = "0.1.0"

"""Kubernetes reporting: the BNGNode status and one Subscriber object per session."""

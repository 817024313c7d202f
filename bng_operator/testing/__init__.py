"""Test infrastructure shipped with the package: a real control plane, a namespace lab."""

"""The lab: test and benchmark harness, kept out of the product package.

Network namespaces joined by veth (``netlab``), a site of a bng node and its subscribers
(``site``), a fake access node adding option 82 (``access_node``), real DHCP clients
(``clients``), perfdhcp and Kea (``perfdhcp``), an in-kernel DHCP load generator
(``dhcpgen``), a real kube-apiserver and etcd (``controlplane``, ``k8s_site``), Cilium's
hubble CLI (``hubble``), where `make setup` caches such binaries (``cache``) and packet
capture (``capture``). ``bng lab``, the tests and the
benchmarks use it; the agent and the operator never import it (tests/unit/test_layering.py).
"""

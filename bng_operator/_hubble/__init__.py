"""Python stubs of Hubble's gRPC API (flow, observer, peer, relay), generated from Cilium
v1.20.2's api/v1 protos by hack/hubble/protos.sh. Do not edit: regenerate."""

CILIUM_VERSION = "1.20.2"
PROTOS = ("flow/flow.proto", "observer/observer.proto", "peer/peer.proto", "relay/relay.proto")

#!/usr/bin/env bash
# Regenerates bng_operator/_hubble/ (Python stubs of Hubble's gRPC API) from the .proto files
# of the Cilium release in VERSION, fetched through the Go module proxy and checked against
# this module's go.sum. Needs Go and grpcio-tools (`pip install -e '.[dev]'`).
# The .proto files are kept in hack/hubble/api/v1, so that tests/unit/test_hubble_stubs.py
# can check the stubs against them without Go.
#   hack/hubble/protos.sh [python]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${1:-$repo/.venv/bin/python}
v=$(cat "$here/VERSION")
export PATH=$PATH:/usr/local/go/bin
src=$(cd "$here" && go mod download -json "github.com/cilium/cilium@v$v" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[[ -d $src/api/v1 ]] || { echo "protos.sh: no api/v1 in ${src:-the module cache}" >&2; exit 1; }
out=$repo/bng_operator/_hubble
protos=(flow/flow.proto observer/observer.proto peer/peer.proto relay/relay.proto)
pkgs=(flow observer peer relay)
rm -rf "$here/api" "$out"
for f in "${protos[@]}"; do install -D -m 644 "$src/api/v1/$f" "$here/api/v1/$f"; done
mkdir -p "$out"
# -I at api/v1 keeps Cilium's proto file names (flow/flow.proto, ...) in the descriptors, so
# the registered names are the ones every other Hubble client and server uses.
(cd "$out" && "$py" -m grpc_tools.protoc -I"$here/api/v1" --python_out=. --pyi_out=. \
  --grpc_python_out=. "${protos[@]}")
# The generated modules import each other as top-level packages (`from flow import flow_pb2`);
# here they live under bng_operator._hubble.
alt=$(IFS='|'; echo "${pkgs[*]}")
sed -i -E "s/^from ($alt)( import |\.)/from bng_operator._hubble.\1\2/" "$out"/*/*.py "$out"/*/*.pyi
for p in "${pkgs[@]}"; do : > "$out/$p/__init__.py"; done
cat > "$out/__init__.py" <<PY
"""Python stubs of Hubble's gRPC API (flow, observer, peer, relay), generated from Cilium
v$v's api/v1 protos by hack/hubble/protos.sh. Do not edit: regenerate."""

CILIUM_VERSION = "$v"
PROTOS = ("flow/flow.proto", "observer/observer.proto", "peer/peer.proto", "relay/relay.proto")
PY
echo "$out"

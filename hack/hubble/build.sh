#!/usr/bin/env bash
# Builds Cilium's hubble CLI (for the Hubble API tests) into ~/.cache/bng/hubble-v<version>/.
# Idempotent: a version already built is left alone. Prints the directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
v=$(cat "$here/VERSION")
out=${BNG_CACHE:-$HOME/.cache/bng}/hubble-v$v
if [[ -x $out/hubble ]]; then echo "$out"; exit 0; fi
# The official Go tarball installs outside PATH in some shells (sudo, make).
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "build.sh: Go is needed to build hubble (https://go.dev/dl)" >&2; exit 1; }
mkdir -p "$out"
cd "$here"
echo "building hubble v$v into $out (first time only, ~6 min)" >&2
# As cilium's Makefile.defs builds it: static (no cgo, osusergo) with the version stamped in.
CGO_ENABLED=0 go build -trimpath -tags osusergo \
  -ldflags "-s -w -X github.com/cilium/cilium/hubble/pkg.Version=v$v" \
  -o "$out/hubble.tmp" github.com/cilium/cilium/hubble
mv "$out/hubble.tmp" "$out/hubble"
echo "$out"

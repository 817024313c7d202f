#!/usr/bin/env bash
# Builds prometheus and promtool (for the alert-rule and scrape tests) into
# ~/.cache/bng/prometheus-<version>/. Idempotent: a version already built is left alone.
# Prints the directory. VERSION is the Go module's version: v0.3XX.Y is Prometheus 3.XX.Y.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
v=$(cat "$here/VERSION")
out=${BNG_CACHE:-$HOME/.cache/bng}/prometheus-$v
if [[ -x $out/prometheus && -x $out/promtool ]]; then echo "$out"; exit 0; fi
# The official Go tarball installs outside PATH in some shells (sudo, make).
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "build.sh: Go is needed to build prometheus (https://go.dev/dl)" >&2; exit 1; }
mkdir -p "$out"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building prometheus and promtool v$v into $out (first time only, ~12 min on 2 cores)" >&2
# Prometheus's go.mod has no replace directives, so `go install module@version` builds it as
# released. Both commands in one go: they share most packages, so the second costs little.
# remove_all_sd drops the cloud service discoveries (AWS, Azure, Kubernetes, ...), which are
# most of the compile time; the tests scrape static targets only. Without the builtinassets
# tag the web UI is not embedded; the HTTP API the tests use works without it.
cd "$tmp"
GOBIN=$tmp GOFLAGS=-buildvcs=false go install -trimpath -tags remove_all_sd \
  -ldflags "-s -w -X github.com/prometheus/common/version.Version=$v" \
  "github.com/prometheus/prometheus/cmd/prometheus@v$v" \
  "github.com/prometheus/prometheus/cmd/promtool@v$v"
mv "$tmp/promtool" "$out/promtool"
mv "$tmp/prometheus" "$out/prometheus"
echo "$out"

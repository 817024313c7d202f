#!/usr/bin/env bash
# Builds helm (for the chart's lint/render test in tests/k8s) into ~/.cache/bng/helm-<version>/.
# Idempotent: a version already built is left alone. Prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
v=$(cat "$here/VERSION")
out=${BNG_CACHE:-$HOME/.cache/bng}/helm-$v
if [[ -x $out/helm ]]; then echo "$out/helm"; exit 0; fi
# The official Go tarball installs outside PATH in some shells (sudo, make).
export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "build.sh: Go is needed to build helm (https://go.dev/dl)" >&2; exit 1; }
mkdir -p "$out"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building helm v$v into $out (first time only, ~2 min)" >&2
# helm's go.mod has no replace directives, so `go install module@version` builds it as released.
# Outside any module, so that the wrapper modules of hack/ do not interfere.
cd "$tmp"
GOBIN=$tmp GOFLAGS=-buildvcs=false go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$v" "helm.sh/helm/v3/cmd/helm@v$v"
mv "$tmp/helm" "$out/helm"
echo "$out/helm"

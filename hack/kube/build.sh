#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests run into ~/.cache/bng/k8s-<version>/:
#   kube-apiserver and etcd (the k8s tier's control plane), and kube-controller-manager,
#   kube-scheduler and kubelet (the cluster tier's node, tests/cluster).
# Idempotent: a binary already built is left alone. Prints the directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
v=$(cat "$here/VERSION")
out=${BNG_CACHE:-$HOME/.cache/bng}/k8s-$v
commands=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
missing=()
for c in "${commands[@]}" etcd; do [[ -x $out/$c ]] || missing+=("$c"); done
if ((${#missing[@]} == 0)); then echo "$out"; exit 0; fi
command -v go >/dev/null || { echo "build.sh: Go is needed to build ${missing[*]} (https://go.dev/dl)" >&2; exit 1; }
mkdir -p "$out"
minor=${v#*.}; minor=${minor%%.*}
cd "$here"
# Two cores: building them at once only thrashes; build one after the other. They share most
# packages, so the first takes most of the time (~6 min cold), the others ~1 min each.
echo "building ${missing[*]} v$v into $out (first time only, ~10 min)" >&2
for c in "${missing[@]}"; do
  if [[ $c == etcd ]]; then
    go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" ./etcd
  else
    go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" -o "$out/$c.tmp" "k8s.io/kubernetes/cmd/$c"
  fi
  mv "$out/$c.tmp" "$out/$c"
done
echo "$out"

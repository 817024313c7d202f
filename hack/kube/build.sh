#!/usr/bin/env bash
# Builds kube-apiserver and etcd for the k8s test tier into ~/.cache/bng/k8s-<version>/.
# Idempotent: a version already built is left alone. Prints the directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
v=$(cat "$here/VERSION")
out=${BNG_CACHE:-$HOME/.cache/bng}/k8s-$v
if [[ -x $out/kube-apiserver && -x $out/etcd ]]; then echo "$out"; exit 0; fi
command -v go >/dev/null || { echo "build.sh: Go is needed to build kube-apiserver (https://go.dev/dl)" >&2; exit 1; }
mkdir -p "$out"
minor=${v#*.}; minor=${minor%%.*}
cd "$here"
# Two cores: building both at once only thrashes; build one after the other.
echo "building kube-apiserver v$v and etcd into $out (first time only, ~10 min)" >&2
go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" -o "$out/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" ./etcd
mv "$out/kube-apiserver.tmp" "$out/kube-apiserver"
mv "$out/etcd.tmp" "$out/etcd"
echo "$out"

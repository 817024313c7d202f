#!/usr/bin/env bash
# Installs everything bng's build and tests need. Idempotent: each step checks first.
# Called by `make setup`; safe to run again at any time.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-bpfcc bpfcc-tools linux-headers-amd64 python3-venv python3-pip
  iproute2 iputils-ping curl openssl tcpdump nftables iperf3 traceroute
  isc-dhcp-client udhcpc dhcpcd-base kea-admin kea-dhcp4-server
  freeradius freeradius-utils
  # the cluster tier (tests/cluster, make cluster): a kubelet's runtime and pod network, and
  # the images built without docker (mmdebstrap; the pause binary, static)
  containerd runc containernetworking-plugins mmdebstrap gcc libc6-dev libcap2-bin
)

sudo_() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

# 1. Debian packages: install only what is missing.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  sudo_ apt-get update -q
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# 2. BCC compiles against /lib/modules/$(uname -r)/build. Kernels without a matching headers
#    package (VMs, CI) get the newest installed Debian headers; XDP/tc programs only use
#    stable UAPI types, so a close version is enough.
kdir=/lib/modules/$(uname -r)
if [[ ! -e $kdir/build/include ]]; then
  build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  [[ -n $build ]] || { say "no kernel headers under /usr/src"; exit 1; }
  say "linking $kdir/build -> $build (running kernel $(uname -r) has no headers package)"
  sudo_ mkdir -p "$kdir"
  sudo_ ln -sfn "$build" "$kdir/build"
  [[ -z $common ]] || sudo_ ln -sfn "$common" "$kdir/source"
fi

# 3. bpffs, where the agent pins its maps.
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
  say "mounting bpffs on /sys/fs/bpf"
  sudo_ mount -t bpf bpf /sys/fs/bpf || say "could not mount bpffs (not root?): bpf tests will fail"
fi

# 4. The venv sees Debian's bcc through --system-site-packages.
if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
if [[ ! -f .venv/.installed || pyproject.toml -nt .venv/.installed ]]; then
  say "installing bng and its dev dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch .venv/.installed
fi
.venv/bin/python -c 'import bcc' || { say "bcc is not importable from .venv"; exit 1; }

# 5. The test control plane (kube-apiserver + etcd) and the cluster tier's node
#    (kube-controller-manager, kube-scheduler, kubelet), built once and cached in ~/.cache/bng.
hack/kube/build.sh >/dev/null
hack/helm/build.sh >/dev/null   # helm, for the chart tests (tests/k8s/test_deploy.py)
hack/hubble/build.sh >/dev/null # the hubble CLI, for the Hubble API tests
hack/prometheus/build.sh >/dev/null   # promtool and prometheus: the alert rules and dashboards
say "ready"

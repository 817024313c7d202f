# The bng image: one image for the operator and the agent (`bng operator` / `bng agent`).
# Build: docker build -t ghcr.io/bng-dev/bng:0.1.0 .   (the chart defaults to the appVersion tag)
#
# Debian's bcc (python3-bpfcc, with its embedded clang) lives in the system Python, so the venv
# sees system site-packages. Kernel headers for BCC come from the host: the agent DaemonSet
# mounts /lib/modules and /usr/src read-only. Test tools (DHCP clients, Kea, FreeRADIUS) are not
# in the image.
FROM debian:bookworm-slim

# python3-bpfcc: BCC (compiles and loads the XDP/tc programs). iproute2: `ip`/`tc`, handy when
# debugging a node from the agent's container (the agent itself uses netlink via pyroute2).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-bpfcc iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/bng
COPY pyproject.toml README.md ./
COPY bng_operator ./bng_operator
RUN python3 -m venv --system-site-packages /opt/bng/venv \
 && /opt/bng/venv/bin/pip install --no-cache-dir . \
 && /opt/bng/venv/bin/python -c 'import bcc, bng_operator.cli'
# The BPF C sources, compiled by BCC on the node at agent start (against the host's headers).
COPY bpf ./bpf
ENV PATH=/opt/bng/venv/bin:$PATH BNG_BPF_DIR=/opt/bng/bpf

# The chart runs the operator as uid 65532 and the agent as uid 0 with a few capabilities.
ENTRYPOINT ["bng"]
CMD ["--help"]

# The bng image: one image for the operator and the agent (`bng operator` / `bng agent`).
# Debian's bcc lives in the system Python, so the venv sees system site-packages.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-bpfcc iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/bng
COPY pyproject.toml README.md ./
COPY bng_operator ./bng_operator
COPY bpf ./bpf
RUN python3 -m venv --system-site-packages /opt/bng/venv \
 && /opt/bng/venv/bin/pip install --no-cache-dir .
ENV PATH=/opt/bng/venv/bin:$PATH BNG_BPF_DIR=/opt/bng/bpf
# Kernel headers for BCC come from the host: mount /lib/modules and /usr/src (see the chart).
ENTRYPOINT ["bng"]
CMD ["--help"]

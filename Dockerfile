# The bng image: one image for the operator and the agent (`bng operator` / `bng agent`).
# Build: docker build -t ghcr.io/bng-dev/bng:0.1.0 .   (the chart defaults to the appVersion tag)
#
# Without a registry or docker, hack/image/build.sh builds the same image from Debian packages
# (mmdebstrap) and takes its settings (ENV, WORKDIR, ENTRYPOINT, CMD) from this file: both
# install hack/image/packages and run hack/image/install.sh. tests/unit/test_image.py checks it.
#
# Debian's bcc (python3-bpfcc, with its embedded clang) lives in the system Python, so the venv
# sees system site-packages. Kernel headers for BCC come from the host: the agent DaemonSet
# mounts /lib/modules and /usr/src read-only. Test tools (DHCP clients, Kea, FreeRADIUS) are not
# in the image.
FROM debian:bookworm-slim

COPY hack/image/packages hack/image/install.sh /tmp/bng-image/
RUN apt-get update \
 && grep -v '^#' /tmp/bng-image/packages | DEBIAN_FRONTEND=noninteractive \
      xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/bng
COPY pyproject.toml README.md ./
COPY bng_operator ./bng_operator
RUN PIP_DISABLE_PIP_VERSION_CHECK=1 sh /tmp/bng-image/install.sh && rm -rf /tmp/bng-image
# The BPF C sources, compiled by BCC on the node at agent start (against the host's headers).
COPY bpf ./bpf

# The chart runs the operator as uid 65532 (install.sh gives it a passwd entry) and the agent
# as uid 0 with a few capabilities.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/bng/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin BNG_BPF_DIR=/opt/bng/bpf
ENTRYPOINT ["bng"]
CMD ["--help"]

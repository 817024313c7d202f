#!/bin/sh
# Installs bng into the image, after the Debian packages of hack/image/packages: run by the
# Dockerfile and by hack/image/build.sh (inside the mmdebstrap root), so both images are built
# by the same steps. Expects the source in /opt/bng (pyproject.toml, README.md, bng_operator/).
set -eu
# Debian's bcc lives in the system Python: the venv sees system site-packages.
python3 -m venv --system-site-packages /opt/bng/venv
/opt/bng/venv/bin/pip install --no-cache-dir --disable-pip-version-check /opt/bng
/opt/bng/venv/bin/python -c 'import bcc, bng_operator.cli'
rm -rf /opt/bng/build /opt/bng/*.egg-info
# The chart runs the operator as uid 65532. kopf asks getpass.getuser(), which fails with
# "getpwuid(): uid not found" unless the uid has a passwd entry.
grep -q '^nonroot:' /etc/group || echo 'nonroot:x:65532:' >> /etc/group
grep -q '^nonroot:' /etc/passwd ||
  echo 'nonroot:x:65532:65532:bng operator:/nonexistent:/usr/sbin/nologin' >> /etc/passwd

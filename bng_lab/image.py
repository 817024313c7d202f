"""Container images built here without a registry or docker: the bng image and a pause image,
written as docker-archive tarballs that ``ctr images import`` takes.

The bng image is the Dockerfile's, built another way: mmdebstrap makes a Debian root with the
packages of ``hack/image/packages``, the source is copied in as the Dockerfile copies it, and
``hack/image/install.sh`` (which the Dockerfile runs too) installs bng. The image's settings
(ENV, WORKDIR, ENTRYPOINT, CMD, USER) are read from the Dockerfile, so the two cannot drift.

Archives are cached under ``~/.cache/bng/images/``, keyed by a hash of everything that goes
into them: a rebuild happens only when the source changes (~1-2 min).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bng_lab.cache import cache_root

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
IMAGE_DIR = REPO / "hack" / "image"
# What the Dockerfile copies into /opt/bng; a change to any of it is a new image.
SOURCES = ("pyproject.toml", "README.md", "bng_operator", "bpf")
PAUSE_TAG = "registry.k8s.io/pause:3.10"


class ImageBuildFailed(RuntimeError):
    """A build step failed: the message carries its output."""


@dataclass(frozen=True)
class ImageConfig:
    """The run settings of an image (the OCI config's ``config``)."""

    env: tuple[str, ...] = ()
    workdir: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str = ""

    def oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Env": list(self.env)}
        if self.workdir:
            out["WorkingDir"] = self.workdir
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.user:
            out["User"] = self.user
        return out


def dockerfile_config(text: str) -> ImageConfig:
    """The settings a Dockerfile gives its image: ENV (``KEY=VALUE`` pairs), WORKDIR,
    ENTRYPOINT and CMD (exec form), USER. Later lines override earlier ones."""
    env: dict[str, str] = {}
    workdir = user = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    for line in _instructions(text):
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "ENV":
            for pair in shlex.split(rest):
                key, sep, value = pair.partition("=")
                if not sep:
                    raise ValueError(f"Dockerfile ENV {rest!r}: only the KEY=VALUE form is read")
                env[key] = value
        elif word == "WORKDIR":
            workdir = rest
        elif word == "USER":
            user = rest
        elif word in ("ENTRYPOINT", "CMD"):
            value = json.loads(rest)
            if not isinstance(value, list):
                raise ValueError(f"Dockerfile {word}: only the exec form is read")
            if word == "ENTRYPOINT":
                entrypoint = tuple(value)
            else:
                cmd = tuple(value)
    return ImageConfig(tuple(f"{k}={v}" for k, v in env.items()), workdir, entrypoint, cmd, user)


def _instructions(text: str) -> Iterable[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield buf + line
        buf = ""
    if buf:
        yield buf


def packages(path: Path = IMAGE_DIR / "packages") -> list[str]:
    """The image's Debian packages (hack/image/packages without its comments)."""
    return [w for line in path.read_text().splitlines()
            if (w := line.split("#", 1)[0].strip())]


def write_archive(out: Path, layers: list[Path], config: ImageConfig, tag: str) -> None:
    """A docker-archive (``docker save`` format) of uncompressed layer tarballs."""
    diff_ids = [f"sha256:{_sha256_file(p)}" for p in layers]
    oci = {"architecture": "amd64", "os": "linux", "config": config.oci(),
           "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    blob = json.dumps(oci, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(blob).hexdigest()}.json"
    layer_names = [f"{d.removeprefix('sha256:')}/layer.tar" for d in diff_ids]
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": layer_names}]
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        _add_bytes(tar, config_name, blob)
        for name, path in zip(layer_names, layers, strict=True):
            tar.add(path, arcname=name)
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
    tmp.replace(out)


def archive_tags(path: Path) -> list[str]:
    """The tags a docker-archive carries."""
    with tarfile.open(path) as tar:
        f = tar.extractfile("manifest.json")
        assert f is not None
        return [t for m in json.load(f) for t in m.get("RepoTags") or []]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _run(argv: list[str], **kw: Any) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise ImageBuildFailed(f"{shlex.join(argv)} failed ({r.returncode}):\n"
                               f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


# --- the bng image -------------------------------------------------------------------------------


def source_digest(repo: Path = REPO) -> str:
    """A hash of every file that goes into the bng image."""
    h = hashlib.sha256()
    files = [repo / "Dockerfile", *sorted((repo / "hack" / "image").iterdir())]
    for name in SOURCES:
        p = repo / name
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if "__pycache__" in f.parts or f.suffix == ".pyc":
            continue
        h.update(str(f.relative_to(repo)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


BNG_REPOSITORY = "bng.test/bng"


def bng_image(repo: Path = REPO) -> tuple[Path, str]:
    """The bng image archive for the source in ``repo`` and its tag (``bng.test/bng:<source
    digest>``): from the cache, or built (mmdebstrap, then install.sh in the root)."""
    digest = source_digest(repo)
    tag = f"{BNG_REPOSITORY}:{digest}"
    out = cache_root() / "images" / f"bng-{digest}.tar"
    if out.exists():
        return out, tag
    if not shutil.which("mmdebstrap"):
        raise ImageBuildFailed("mmdebstrap not found: `make setup` installs it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bng-image-") as tmp:
        layer = Path(tmp) / "rootfs.tar"
        src = Path(tmp) / "src"
        src.mkdir()
        for name in SOURCES:
            p = repo / name
            if p.is_dir():
                shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(p, src / name)
        shutil.copy2(IMAGE_DIR / "install.sh", src / "install.sh")
        hooks = [
            f'mkdir -p "$1/opt/bng" && cp -a {src}/. "$1/opt/bng/"',
            # install.sh needs PyPI: the host's resolver and the CAs it trusts (a proxy's,
            # say), for the build only.
            'cp /etc/resolv.conf "$1/etc/resolv.conf"',
            f'cp {_host_ca_bundle()} "$1/tmp/host-ca.crt"',
            'chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root '
            'PIP_CERT=/tmp/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 sh /opt/bng/install.sh',
            'rm -f "$1/opt/bng/install.sh" "$1/etc/resolv.conf" "$1/tmp/host-ca.crt"',
            'rm -rf "$1/var/lib/apt/lists"/* "$1/var/cache/apt"/*',
        ]
        argv = ["mmdebstrap", "--variant=minbase", "--mode=root",
                f"--include={','.join(packages())}",
                *(f"--customize-hook={h}" for h in hooks), "bookworm", str(layer)]
        _run(argv, timeout=900)
        config = dockerfile_config(DOCKERFILE.read_text())
        write_archive(out, [layer], config, tag)
    for old in out.parent.glob("bng-*.tar"):  # ~700 MB each: only the current one is kept
        if old != out:
            old.unlink(missing_ok=True)
    return out, tag


def _host_ca_bundle() -> str:
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if (path := os.environ.get(var)) and Path(path).is_file():
            return path
    return "/etc/ssl/certs/ca-certificates.crt"


# --- the pause image -----------------------------------------------------------------------------


def pause_image() -> Path:
    """The pause image (every pod's sandbox), built from Kubernetes' own pause.c of the
    pinned release, statically linked."""
    version = (REPO / "hack" / "kube" / "VERSION").read_text().strip()
    out = cache_root() / "images" / f"pause-{version}.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{version}"],
                       capture_output=True, text=True, cwd=REPO / "hack" / "kube")
    if r.returncode != 0:
        raise ImageBuildFailed(f"go mod download k8s.io/kubernetes@v{version}:\n{r.stderr}")
    source = Path(json.loads(r.stdout)["Dir"]) / "build" / "pause" / "linux" / "pause.c"
    with tempfile.TemporaryDirectory(prefix="bng-pause-") as tmp:
        binary = Path(tmp) / "pause"
        _run(["gcc", "-Os", "-Wall", "-static", f'-DVERSION="{PAUSE_TAG.split(":")[1]}"',
              "-o", str(binary), str(source)])
        layer = Path(tmp) / "layer.tar"
        with tarfile.open(layer, "w") as tar:
            tar.add(binary, arcname="pause")
        write_archive(out, [layer], ImageConfig(entrypoint=("/pause",), user="65535:65535"),
                      PAUSE_TAG)
    return out


if __name__ == "__main__":  # python -m bng_lab.image: build (or find) both, say where
    for path, tag in (image := bng_image(), (pause_image(), PAUSE_TAG)):
        print(f"{tag}\t{path}")

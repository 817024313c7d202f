"""The image built without docker (bng_lab.image) is the Dockerfile's: same packages, same
install steps, same sources, same settings; and its archive is what `ctr import` reads."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path

import pytest

from bng_lab import image

DOCKERFILE = image.DOCKERFILE.read_text()


@pytest.mark.parametrize(("text", "expected"), [
    ('ENV A=1 B="two words"\nENTRYPOINT ["bng"]\nCMD ["--help"]\n',
     image.ImageConfig(("A=1", "B=two words"), "", ("bng",), ("--help",))),
    ("# a comment\nWORKDIR /opt\nENV A=1 \\\n    B=2\nENV A=3\nUSER 65532\n",
     image.ImageConfig(("A=3", "B=2"), "/opt", (), (), "65532")),
    ("RUN apt-get update \\\n # a comment in a continuation\n && true\nCMD []\n",
     image.ImageConfig()),
])
def test_the_settings_a_dockerfile_gives_its_image(text: str,
                                                   expected: image.ImageConfig) -> None:
    assert image.dockerfile_config(text) == expected


@pytest.mark.parametrize("text", ["ENV A 1\n", "CMD bng --help\n"])
def test_forms_the_reader_does_not_take_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        image.dockerfile_config(text)


def test_the_dockerfile_and_the_mmdebstrap_build_install_the_same_things() -> None:
    # The same package list, read by apt in the Dockerfile ...
    assert "COPY hack/image/packages hack/image/install.sh /tmp/bng-image/" in DOCKERFILE
    assert re.search(r"grep -v '\^#' /tmp/bng-image/packages \|.*\n?.*xargs apt-get install",
                     DOCKERFILE)
    assert image.packages() == ["python3", "python3-venv", "python3-bpfcc", "iproute2",
                                "ca-certificates"]
    # ... the same install script ...
    assert "sh /tmp/bng-image/install.sh" in DOCKERFILE
    # ... the same sources, where the Dockerfile puts them (WORKDIR /opt/bng).
    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE, re.M)
    sources = {w for line in copied if "hack/image" not in line for w in line.split()}
    assert sources == set(image.SOURCES)
    config = image.dockerfile_config(DOCKERFILE)
    assert config.workdir == "/opt/bng" and config.entrypoint == ("bng",)
    env = dict(e.split("=", 1) for e in config.env)
    assert env["PATH"].startswith("/opt/bng/venv/bin:") and env["BNG_BPF_DIR"] == "/opt/bng/bpf"


def test_the_archive_is_a_docker_archive(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        f = tmp_path / "pause"
        f.write_bytes(b"\x7fELF")
        tar.add(f, arcname="pause")
    out = tmp_path / "image.tar"
    image.write_archive(out, [layer], image.ImageConfig(entrypoint=("/pause",)), "x.test/p:1")
    assert image.archive_tags(out) == ["x.test/p:1"]
    with tarfile.open(out) as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        (name,) = manifest["Layers"]
        data = tar.extractfile(name).read()  # type: ignore[union-attr]
    digest = hashlib.sha256(data).hexdigest()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{digest}"]}
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["os"] == "linux" and config["architecture"] == "amd64"

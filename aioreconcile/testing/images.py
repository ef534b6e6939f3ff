"""Container images without a registry: a Debian base from debootstrap, the pause image, archives.

No registry is reachable from the test machines, so every image a pod runs is made here and
imported. :func:`write_image_archive` writes one tar that both ``ctr images import`` (it reads the
OCI layout: ``oci-layout``, ``index.json``, ``blobs/sha256/...``) and ``docker load`` (dockerd
20.10 reads only ``manifest.json``) accept: the blobs are shared, only the two indexes differ.
The layout follows the OCI image-spec (image-layout.md) and Docker's ``docker save`` format.

The base image is ``debootstrap --variant=minbase`` of a Debian suite from the mirror apt already
uses on this machine, cached under the testenv cache keyed by suite, so it is made once per
machine (about 3.5 minutes, 206 MB).
"""

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aioreconcile.testing.toolchain import ToolchainError, cache_root, require

PAUSE_IMAGE: Final = "localhost/aioreconcile-testenv/pause:v1"
BASE_SUITE: Final = "bookworm"
_OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config a test image needs."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    user: str = ""
    working_dir: str = ""
    labels: Mapping[str, str] | None = None


def base_image_reference(suite: str = BASE_SUITE) -> str:
    return f"localhost/aioreconcile-testenv/debian-minbase:{suite}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_layer(source: Path, layer: Path) -> None:
    """Tar the tree under ``source`` as an image layer (numeric owners, paths relative to /)."""
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(source)):
            tar.add(source / entry, arcname=entry, recursive=True)


def write_image_archive(
    destination: Path, *, reference: str, layer: Path, config: ImageConfig = ImageConfig()
) -> Path:
    """Write an image of one uncompressed ``layer`` tar as an archive containerd and docker load.

    ``reference`` is the full name (``registry/repository:tag``) both runtimes will list.
    """
    diff_id = _sha256_file(layer)
    labels = dict(config.labels or {})
    image_config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            key: value
            for key, value in {
                "Entrypoint": list(config.entrypoint) or None,
                "Cmd": list(config.cmd) or None,
                "Env": list(config.env) or None,
                "User": config.user or None,
                "WorkingDir": config.working_dir or None,
                "Labels": labels or None,
            }.items()
            if value is not None
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "aioreconcile.testing"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": _OCI_MANIFEST,
        "config": {
            "mediaType": _OCI_CONFIG,
            "digest": f"sha256:{config_digest}",
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": _OCI_LAYER, "digest": f"sha256:{diff_id}", "size": layer.stat().st_size}
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = hashlib.sha256(manifest_bytes).hexdigest()
    _, _, tag = reference.rpartition(":")
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": _OCI_MANIFEST,
                "digest": f"sha256:{manifest_digest}",
                "size": len(manifest_bytes),
                "annotations": {
                    # containerd names the image by this one; OCI tools by the ref name.
                    "io.containerd.image.name": reference,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    docker_manifest = [
        {
            "Config": f"blobs/sha256/{config_digest}",
            "RepoTags": [reference],
            "Layers": [f"blobs/sha256/{diff_id}"],
        }
    ]
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

        add_bytes("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add_bytes("index.json", json.dumps(index, sort_keys=True).encode())
        add_bytes("manifest.json", json.dumps(docker_manifest).encode())
        add_bytes(f"blobs/sha256/{config_digest}", config_bytes)
        add_bytes(f"blobs/sha256/{manifest_digest}", manifest_bytes)
        tar.add(layer, arcname=f"blobs/sha256/{diff_id}")
    partial.replace(destination)
    return destination


def pause_image_archive() -> Path:
    """The sandbox image: FROM scratch + the static ``pause`` binary (built by build.sh)."""
    binary = require("pause")
    directory = binary.parent.parent
    archive = directory / "pause-image.tar"
    if archive.exists() and archive.stat().st_mtime >= binary.stat().st_mtime:
        return archive
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        root = Path(scratch) / "root"
        root.mkdir()
        shutil.copy2(binary, root / "pause")
        (root / "pause").chmod(0o755)
        layer = Path(scratch) / "layer.tar"
        write_layer(root, layer)
        write_image_archive(
            archive,
            reference=PAUSE_IMAGE,
            layer=layer,
            config=ImageConfig(entrypoint=["/pause"], env=()),
        )
    return archive


def apt_mirror(suite: str = BASE_SUITE, sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt on this machine uses for ``suite`` (deb822 or one-line format)."""
    files = sorted((sources / "sources.list.d").glob("*.sources"))
    for path in files:
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = _deb822(stanza)
            if suite in fields.get("suites", "").split() and "deb" in fields.get("types", ""):
                return fields["uris"].split()[0]
    lists = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    raise ToolchainError(
        f"no apt source for Debian {suite} in {sources}/sources.list(.d); the base image is made "
        f"by debootstrap from the mirror apt uses"
    )


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields


def base_image_archive(
    suite: str = BASE_SUITE, *, progress: Callable[[str], object] = print
) -> Path:
    """The Debian ``minbase`` image of ``suite``, made once per machine and cached."""
    directory = cache_root() / f"debian-minbase-{suite}"
    archive = directory / "image.tar"
    if archive.exists():
        return archive
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ToolchainError(
            "debootstrap is not installed: `apt-get install -y debootstrap` (the base image of "
            "the test pods is made from the Debian mirror)"
        )
    mirror = apt_mirror(suite)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        rootfs = Path(scratch) / "rootfs"
        log = directory / "debootstrap.log"
        progress(f"[testenv] base image: debootstrap --variant=minbase {suite} from {mirror}")
        with log.open("wb") as output:
            code = subprocess.call(
                [debootstrap, "--variant=minbase", suite, str(rootfs), mirror],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise ToolchainError(f"debootstrap failed with code {code} (log {log}):\n{tail}")
        # apt's cache is not part of an image; debootstrap leaves the .debs it installed.
        for cached in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            cached.unlink()
        layer = Path(scratch) / "layer.tar"
        write_layer(rootfs, layer)
        write_image_archive(
            archive,
            reference=base_image_reference(suite),
            layer=layer,
            config=ImageConfig(cmd=["bash"]),
        )
    progress(f"[testenv] base image: {archive} ({archive.stat().st_size >> 20} MiB)")
    return archive

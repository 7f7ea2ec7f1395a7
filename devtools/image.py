"""Container images for the real node, built without Docker or a registry (`hack/image`).

The operator's image: a Debian root filesystem from Debian's own packages (debootstrap
minbase with python3, python3-venv, ca-certificates), the project's wheel and its
dependencies installed into a virtualenv inside it (from a wheelhouse the host fills
from PyPI, so the chroot needs no network), the user and configuration of the
`Dockerfile`. umoci makes the OCI image (plain directories in, no daemon, config set
field by field); skopeo turns it into a docker-archive, the one format that
`ctr images import` takes with the image's name kept.

Every image is cached under a hash of its inputs, so a warm run only imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Debian's default PATH, which the Dockerfile's `$PATH` stands for.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VENV = "/opt/wa-controller"
USER_ID = 65532
USER_NAME = "wa-controller"
# Files of the checkout that go into the operator's image.
IMAGE_INPUTS = ("pyproject.toml", "README.md", "controller")
# What the Debian root filesystem does not need inside an image.
ROOTFS_LEFTOVERS = (
    "var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
    "usr/share/info", "var/log",
)


@dataclass(frozen=True)
class ImageConfig:
    """The runtime fields of an OCI image config that the Dockerfile also sets."""

    user: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[str, ...] = ()
    workdir: str = "/"

    def umoci_flags(self) -> list[str]:
        flags = ["--clear=config.env", "--clear=config.exposedports",
                 f"--config.user={self.user}", f"--config.workingdir={self.workdir}"]
        flags += [f"--config.entrypoint={word}" for word in self.entrypoint]
        flags += [f"--config.cmd={word}" for word in self.cmd]
        flags += [f"--config.env={key}={value}" for key, value in self.env.items()]
        flags += [f"--config.exposedports={port}" for port in self.ports]
        return flags

    @classmethod
    def from_oci(cls, config: dict) -> ImageConfig:
        """Read back the fields from an OCI image config's `config` object."""
        env = dict(item.split("=", 1) for item in config.get("Env") or [])
        return cls(
            user=config.get("User", ""),
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            env=env,
            ports=tuple(sorted(config.get("ExposedPorts") or {})),
            workdir=config.get("WorkingDir", "/"),
        )


# The operator's image: the same user, entrypoint, command, environment, ports and
# working directory as the Dockerfile (tests/e2e/test_image.py holds the two in line).
OPERATOR_CONFIG = ImageConfig(
    user=f"{USER_ID}:{USER_ID}",
    entrypoint=("wa-controller",),
    cmd=("run",),
    env={
        "PATH": f"{VENV}/bin:{BASE_PATH}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "USER": USER_NAME,
        "LOGNAME": USER_NAME,
        "HOME": "/tmp",  # noqa: S108 - the chart mounts a writable emptyDir there
    },
    ports=("8080/tcp", "8081/tcp", "9090/tcp"),
    workdir="/tmp",  # noqa: S108
)
OPERATOR_IMAGE = "docker.io/library/wa-controller:dev"
PAUSE_IMAGE = "wa-controller.local/pause:3.10"
PAUSE_CONFIG = ImageConfig(user="65535:65535", entrypoint=("/pause",), cmd=())


class ImageError(RuntimeError):
    """An image could not be built; the message says which step failed and why."""


@dataclass(frozen=True)
class BuiltImage:
    name: str
    archive: Path  # a docker-archive for `ctr images import`
    config: ImageConfig
    size_bytes: int  # compressed layers, as a registry would store them


def cache_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("WA_IMAGE_CACHE", cache / "wa-controller" / "images"))


def _run(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 900) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    if result.returncode != 0:
        raise ImageError(f"{' '.join(map(str, argv))} exited {result.returncode}:\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def _log(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def files_digest(paths: list[Path], *extra: str) -> str:
    """A hash of the files' relative names and contents (directories walked), plus text."""
    digest = hashlib.sha256()
    for text in extra:
        digest.update(text.encode() + b"\0")
    for top in paths:
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            name = path.relative_to(top) if top.is_dir() else Path(path.name)
            digest.update(f"{top.name}/{name}".encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def operator_image_key() -> str:
    """Changes whenever anything that ends up in the operator's image changes."""
    return files_digest(
        [ROOT / name for name in IMAGE_INPUTS] + [Path(__file__)],
        DEBIAN_SUITE, *DEBIAN_PACKAGES, json.dumps(OPERATOR_CONFIG.__dict__, sort_keys=True),
    )


# --- building blocks ------------------------------------------------------------------

def debian_rootfs() -> Path:
    """A cached, cleaned Debian minbase root filesystem (debootstrap, ~1 min once)."""
    key = hashlib.sha256(" ".join((DEBIAN_SUITE, *DEBIAN_PACKAGES)).encode()).hexdigest()[:12]
    target = cache_dir() / f"debian-{DEBIAN_SUITE}-{key}"
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _log(f"debootstrap {DEBIAN_SUITE} minbase with {', '.join(DEBIAN_PACKAGES)}")
    _run("debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
         DEBIAN_SUITE, partial, DEBIAN_MIRROR, timeout=1200)
    for leftover in ROOTFS_LEFTOVERS:
        path = partial / leftover
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
    partial.rename(target)
    (target / ".complete").touch()
    return target


def wheelhouse(destination: Path) -> None:
    """The project's wheel and every dependency's, fetched by the host's pip."""
    source = destination.parent / "source"  # a copy, so the build leaves the checkout clean
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    for name in IMAGE_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    _log("fetching the project's wheel and its dependencies")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", destination, source,
         timeout=900)
    shutil.rmtree(source)


def install_operator(rootfs: Path, wheels: Path) -> None:
    """A virtualenv at VENV with the project, and the image's user, inside `rootfs`."""
    inside = rootfs / "wheels"
    shutil.copytree(wheels, inside)
    env = {"PATH": BASE_PATH, "HOME": "/root", "LANG": "C.UTF-8",
           "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _log("installing the project into a virtualenv inside the root filesystem")
    _run("chroot", rootfs, "python3", "-m", "venv", VENV, env=env)
    _run("chroot", rootfs, f"{VENV}/bin/pip", "install", "-q", "--no-index",
         "--find-links=/wheels", "wa-controller", env=env)
    # A passwd entry for tools that look the user up; the operator itself never does.
    _run("chroot", rootfs, "groupadd", f"--gid={USER_ID}", USER_NAME, env=env)
    _run("chroot", rootfs, "useradd", f"--uid={USER_ID}", f"--gid={USER_ID}",
         "--no-create-home", "--home-dir=/tmp", "--shell=/usr/sbin/nologin", USER_NAME, env=env)
    shutil.rmtree(inside)


def oci_image(layout: Path, rootfs_filler: Callable[[Path], None], config: ImageConfig) -> None:
    """An OCI layout with one layer: whatever `rootfs_filler(rootfs)` puts in an empty dir."""
    bundle = layout.with_name(layout.name + ".bundle")
    shutil.rmtree(layout, ignore_errors=True)
    shutil.rmtree(bundle, ignore_errors=True)
    image = f"{layout}:image"
    _run("umoci", "init", "--layout", layout)
    _run("umoci", "new", "--image", image)
    _run("umoci", "unpack", "--image", image, bundle)
    rootfs_filler(bundle / "rootfs")
    _log(f"packing {layout.name} with umoci")
    _run("umoci", "repack", "--image", image, bundle)
    _run("umoci", "config", "--image", image, "--os=linux", "--architecture=amd64",
         *config.umoci_flags())
    _run("umoci", "gc", "--layout", layout)
    shutil.rmtree(bundle)


def read_oci_config(layout: Path) -> tuple[dict, int]:
    """The image config of the one image in an OCI layout, and its layers' total size."""
    index = json.loads((layout / "index.json").read_text())
    manifest = _blob(layout, index["manifests"][0]["digest"])
    config = _blob(layout, manifest["config"]["digest"])
    return config, sum(layer["size"] for layer in manifest["layers"])


def _blob(layout: Path, digest: str) -> dict:
    algorithm, value = digest.split(":")
    return json.loads((layout / "blobs" / algorithm / value).read_text())


def _archive(layout: Path, name: str, archive: Path) -> None:
    partial = archive.with_name(archive.name + ".partial")
    partial.unlink(missing_ok=True)
    _run("skopeo", "copy", "--quiet", f"oci:{layout}:image", f"docker-archive:{partial}:{name}")
    partial.rename(archive)


def _cached(name: str, key: str, build: Callable[[Path], None]) -> BuiltImage:
    """The image `name` for inputs `key`: from the cache, or built by `build(layout)`."""
    slug = name.rsplit("/", 1)[-1].replace(":", "-")
    layout = cache_dir() / f"{slug}-{key}.oci"
    archive = cache_dir() / f"{slug}-{key}.tar"
    if not archive.exists():
        for stale in cache_dir().glob(f"{slug}-*"):  # one version per image is enough
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        cache_dir().mkdir(parents=True, exist_ok=True)
        build(layout)
        _archive(layout, name, archive)
    oci_config, size = read_oci_config(layout)
    return BuiltImage(name, archive, ImageConfig.from_oci(oci_config["config"]), size)


# --- the images -----------------------------------------------------------------------

def operator_image() -> BuiltImage:
    """The operator (and simulator) image, `wa-controller:dev`."""

    def build(layout: Path) -> None:
        base = debian_rootfs()
        with tempfile.TemporaryDirectory(dir=cache_dir()) as scratch:
            wheels = Path(scratch) / "wheels"
            wheelhouse(wheels)

            def fill(rootfs: Path) -> None:
                _run("cp", "-a", f"{base}/.", rootfs)
                (rootfs / ".complete").unlink()
                install_operator(rootfs, wheels)

            oci_image(layout, fill, OPERATOR_CONFIG)

    return _cached(OPERATOR_IMAGE, operator_image_key(), build)


def pause_source() -> Path:
    """pause.c from the k8s.io/kubernetes module that kube-apiserver is built from."""
    versions = (ROOT / "hack" / "tools" / "versions.env").read_text()
    version = next(line.split("=", 1)[1] for line in versions.splitlines()
                   if line.startswith("KUBERNETES_VERSION="))
    modcache = _run("go", "env", "GOMODCACHE").strip()
    source = Path(modcache) / f"k8s.io/kubernetes@v{version}/build/pause/linux/pause.c"
    if not source.exists():
        raise ImageError(f"{source} is missing: run hack/build-tools --node first")
    return source


def pause_image() -> BuiltImage:
    """The pod sandbox image: Kubernetes' pause.c, compiled static here (~700 KB)."""
    source = pause_source()

    def build(layout: Path) -> None:
        def fill(rootfs: Path) -> None:
            _run("gcc", "-Os", "-static", "-o", rootfs / "pause", source)
            _run("strip", rootfs / "pause")

        oci_image(layout, fill, PAUSE_CONFIG)

    key = files_digest([source], json.dumps(PAUSE_CONFIG.__dict__, sort_keys=True))
    return _cached(PAUSE_IMAGE, key, build)


def import_image(image: BuiltImage, containerd_socket: Path) -> None:
    """Load an image into containerd's k8s.io namespace, where the kubelet finds it."""
    _run("ctr", f"--address={containerd_socket}", "-n", "k8s.io", "images", "import",
         image.archive, timeout=600)


def main(argv: list[str] | None = None) -> int:
    """`hack/image` builds (or reuses) the operator's image and prints its archive."""
    import argparse

    parser = argparse.ArgumentParser(prog="hack/image", description=main.__doc__)
    parser.add_argument("--import-into", type=Path, metavar="CONTAINERD_SOCKET",
                        help="also import it into this containerd")
    args = parser.parse_args(argv)
    try:
        image = operator_image()
        if args.import_into:
            import_image(image, args.import_into)
    except ImageError as error:
        print(f"image build failed: {error}", file=sys.stderr)
        return 1
    _log(f"{image.name}: {image.size_bytes / 2**20:.1f} MiB compressed ({image.archive})")
    print(image.archive)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

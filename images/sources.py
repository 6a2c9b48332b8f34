"""Engine sources on the host: PyPI sdists by version (cached), or a local tree."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path

import httpx

from model.errors import UsageError
from model.spec import EngineSource


def fetch_engine(engine: EngineSource, cache: Path) -> Path:
    """Return an unpacked source tree for `engine`, downloading the sdist once into `cache`."""
    if engine.kind == "path":
        tree = Path(engine.ref).expanduser().resolve()
        if not (tree / "CMakeLists.txt").is_file() and not (tree / "setup.py").is_file():
            raise UsageError(f"{tree}: not a vLLM source tree (no CMakeLists.txt or setup.py)")
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    tree = cache / f"vllm-{engine.ref}"
    if (tree / "setup.py").is_file():
        return tree
    sdist = cache / f"vllm-{engine.ref}.tar.gz"
    if not sdist.is_file():
        download_sdist("vllm", engine.ref, sdist)
    tmp = cache / f".unpack-{engine.ref}"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp, filter="data")
    (tmp / f"vllm-{engine.ref}").rename(tree)
    shutil.rmtree(tmp, ignore_errors=True)
    return tree


def download_sdist(project: str, version: str, dest: Path) -> None:
    """The sdist listed by PyPI's simple JSON API (PEP 691), checked against its sha256.
    (`pip download --no-binary :all:` would first build every build dependency from source.)"""
    index = f"https://pypi.org/simple/{project}/"
    name = f"{project}-{version}.tar.gz"
    try:
        meta = httpx.get(index, headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60,
                         follow_redirects=True)
        meta.raise_for_status()
        files = [f for f in meta.json()["files"] if f["filename"] == name]
        if not files:
            raise UsageError(f"{project}=={version}: PyPI lists no sdist {name} (a release without one, or no such version)")
        part = dest.with_suffix(".part")
        digest = hashlib.sha256()
        with httpx.stream("GET", files[0]["url"], timeout=300, follow_redirects=True) as r, open(part, "wb") as fh:
            r.raise_for_status()
            for chunk in r.iter_bytes(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
    except httpx.HTTPError as exc:
        raise UsageError(f"{project}=={version}: cannot download the sdist from PyPI ({exc})") from None
    if digest.hexdigest() != files[0]["hashes"]["sha256"]:
        part.unlink(missing_ok=True)
        raise UsageError(f"{project}=={version}: the sdist's sha256 does not match PyPI's")
    part.rename(dest)


def copy_tree(src: Path, dest: Path) -> Path:
    """A per-cell copy: each cell's build dir lives inside its own tree, so cells never share one."""
    if not (dest / "setup.py").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest, symlinks=True)
    return dest


def torch_cuda_of(version: str, python: str) -> str:
    """The CUDA version PyPI's torch==`version` wheel for this CPython (linux x86_64) is built for,
    read from its PEP 658 metadata (no wheel download): '13.0', or '' for a CPU-only wheel."""
    import re
    tag = "cp" + "".join(python.split(".")[:2])
    try:
        meta = httpx.get("https://pypi.org/simple/torch/", headers={"Accept": "application/vnd.pypi.simple.v1+json"},
                         timeout=60, follow_redirects=True)
        meta.raise_for_status()
        wheels = [f for f in meta.json()["files"] if f["filename"].startswith(f"torch-{version}-{tag}-")
                  and "manylinux" in f["filename"] and "x86_64" in f["filename"]]
        if not wheels:
            raise UsageError(f"torch=={version}: PyPI has no linux x86_64 wheel for {tag}")
    except httpx.HTTPError as exc:
        raise UsageError(f"torch=={version}: cannot read its metadata from PyPI ({exc})") from None
    # PEP 658 .metadata files 404 behind some mirrors (here); HTTP range reads of the wheel's zip
    # directory fetch only METADATA (a few hundred KiB of a ~550 MB wheel).
    from remotezip import RemoteZip, RemoteIOError
    try:
        with RemoteZip(wheels[0]["url"]) as z:
            text = z.read(f"torch-{version}.dist-info/METADATA").decode()
    except (RemoteIOError, KeyError, OSError) as exc:
        raise UsageError(f"torch=={version}: cannot read its METADATA from PyPI ({exc})") from None
    for line in text.splitlines():
        m = re.match(r"Requires-Dist: (?:cuda-toolkit\S*|nvidia-cuda-runtime\S*)\s*==\s*(\d+\.\d+)", line)
        if m:
            return m.group(1)
    return ""

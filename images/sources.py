"""Engine sources on the host: PyPI sdists by version (cached), or a local tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from matrix.errors import UsageError
from matrix.spec import EngineSource


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
        out = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                              f"vllm=={engine.ref}", "-d", str(cache)], capture_output=True, text=True)
        if out.returncode != 0 or not sdist.is_file():
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise UsageError(f"vllm=={engine.ref}: cannot download the sdist from PyPI: {last}")
    tmp = cache / f".unpack-{engine.ref}"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp, filter="data")
    (tmp / f"vllm-{engine.ref}").rename(tree)
    shutil.rmtree(tmp, ignore_errors=True)
    return tree


def copy_tree(src: Path, dest: Path) -> Path:
    """A per-cell copy: each cell's build dir lives inside its own tree, so cells never share one."""
    if not (dest / "setup.py").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest, symlinks=True)
    return dest

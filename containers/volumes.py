"""Size-limited filesystems for a container's host folders: a sparse ext4 image, loop-mounted.

What a build meets on a small disk (ENOSPC from the compiler, pip or CMake) is only real on a real
filesystem of that size. Docker 20.10's local volume driver cannot loop-mount an image file
("loop: invalid argument"), and a tmpfs volume is memory (charged to the container's memory limit),
so the mount is the host's own: mount(8) with -o loop, which needs root. The mount lives exactly as
long as the `with`; one left by a killed run is unmounted when the next one starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from model.errors import UsageError


def _run(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise UsageError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip()[-300:]}")


def unmount(where: Path) -> bool:
    """Unmount `where` if something is mounted there; True when it was."""
    if not os.path.ismount(where):
        return False
    _run("umount", str(where))
    return True


def release(where: Path) -> None:
    """Unmount a small filesystem a killed run left at `where` and remove its image."""
    unmount(where)
    _image(where).unlink(missing_ok=True)


def _image(where: Path) -> Path:
    return where.with_name(f".{where.name}.ext4")


@contextmanager
def small_fs(where: Path, size_gb: float) -> Iterator[Path]:
    """An empty ext4 filesystem of `size_gb` (1e9 bytes) mounted at `where` for the block; the image
    file (sparse, beside `where`) and the mount are removed after, whatever happens."""
    if os.geteuid() != 0:
        raise UsageError(f"a {size_gb:g} GB filesystem for {where} is a loop mount, which needs root "
                         "(run as root, or leave knobs.workspace_gb at \"none\")")
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            raise UsageError(f"{tool} is missing on this host (Debian: apt-get install e2fsprogs mount)")
    where = Path(where)
    image = _image(where)
    release(where)  # a killed run's
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(int(size_gb * 1e9))
    try:
        # -m 0: no blocks reserved for root (the build runs as root and would use them); no journal:
        # on a few MB the journal would be most of the disk
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(image))
        _run("mount", "-o", "loop", str(image), str(where))
        try:
            yield where
        finally:
            unmount(where)
    finally:
        image.unlink(missing_ok=True)

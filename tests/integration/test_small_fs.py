"""containers.volumes.small_fs on the real kernel: a loop-mounted ext4 of the size asked, ENOSPC past
it, and nothing left after (no mount, no image), also when a killed run left its mount behind."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from containers.volumes import release, small_fs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a loop mount needs root (CI runs as root)")


def test_writes_past_the_size_meet_enospc_and_nothing_is_left(tmp_path):
    where = tmp_path / "src" / "build"
    with small_fs(where, 0.01) as fs:
        assert os.path.ismount(fs)
        assert 8e6 < os.statvfs(fs).f_blocks * os.statvfs(fs).f_frsize <= 10e6
        with pytest.raises(OSError) as exc, open(fs / "blob", "wb") as fh:
            for _ in range(20):
                fh.write(b"\0" * 2**20)
                fh.flush()
                os.fsync(fh.fileno())
        assert exc.value.errno == errno.ENOSPC
    assert not os.path.ismount(where) and not list(where.parent.glob(".*.ext4"))


def test_a_mount_a_killed_run_left_is_released(tmp_path):
    where = tmp_path / "build"
    image = tmp_path / ".build.ext4"
    image.write_bytes(b"")
    os.truncate(image, 8 * 10**6)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(image)], check=True)
    where.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(where)], check=True)
    release(where)
    assert not os.path.ismount(where) and not image.exists()

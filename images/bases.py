"""Base images per distro: pulled where a registry answers, else debootstrapped and imported.

A base that can be neither pulled nor bootstrapped (Fedora on a Debian host with no registry)
is reported as unavailable with the reason; the caller turns that into a `base-unavailable`
outcome, never a crash and never a pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import APIError

from containers.engine import ensure_host_tools
from containers.images import exists, import_rootfs, pull
from model.spec import Distro

MIRROR = os.environ.get("DEPLOYLAB_DEBIAN_MIRROR", "http://deb.debian.org/debian")


@dataclass(frozen=True)
class BaseResult:
    distro: str
    tag: str
    available: bool
    how: str  # "cached" | "pulled" | "debootstrap" | "unavailable"
    reason: str = ""
    seconds: float = 0.0


def base_tag(distro: Distro) -> str:
    return f"deploylab/base:{distro.name}"


def _apt_sources(distro: Distro) -> str:
    comps = " ".join(distro.components or ("main",))
    lines = [f"deb {MIRROR} {distro.suite} {comps}"]
    if distro.suite not in ("sid", "unstable"):
        lines.append(f"deb {MIRROR} {distro.suite}-updates {comps}")
        lines.append(f"deb http://deb.debian.org/debian-security {distro.suite}-security {comps}")
    # deb-src lets build stages fetch Debian's source of offline inputs (oneDNN).
    lines += [line.replace("deb ", "deb-src ", 1) for line in lines[:1]]
    return "\n".join(lines) + "\n"


def debootstrap(client: docker.DockerClient, distro: Distro, tag: str, log: Path | None = None) -> None:
    """debootstrap --variant=minbase into a temp dir, add apt config, docker import as `tag`."""
    ensure_host_tools({"debootstrap": "debootstrap"})
    with tempfile.TemporaryDirectory(prefix=f"deploylab-{distro.name}-") as tmp:
        root = Path(tmp) / "root"
        cmd = ["debootstrap", "--variant=minbase", "--include=ca-certificates",
               f"--components={','.join(distro.components or ('main',))}", distro.suite, str(root), MIRROR]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if log:
            log.write_text(out.stdout + out.stderr)
        if out.returncode != 0:
            tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"debootstrap {distro.suite} failed: {' | '.join(tail)}")
        (root / "etc/apt/sources.list").write_text(_apt_sources(distro))
        apt_conf = root / "etc/apt/apt.conf.d"
        apt_conf.mkdir(parents=True, exist_ok=True)
        conf = 'APT::Install-Recommends "false";\nAcquire::Retries "3";\n'
        if not distro.apt_check_valid_until:
            conf += 'Acquire::Check-Valid-Until "false";\n'
        (apt_conf / "90deploylab").write_text(conf)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."], check=True)
        import_rootfs(client, tarball, tag, changes=['CMD ["/bin/bash"]', "ENV LANG=C.UTF-8"])


def ensure_base(client: docker.DockerClient, distro: Distro, log: Path | None = None,
                force: bool = False) -> BaseResult:
    tag = base_tag(distro)
    t0 = time.monotonic()
    if not force and exists(client, tag):
        return BaseResult(distro.name, tag, True, "cached")
    pull_err = pull(client, distro.image, tag)
    if pull_err is None:
        return BaseResult(distro.name, tag, True, "pulled", seconds=time.monotonic() - t0)
    if distro.family != "debian":
        return BaseResult(distro.name, tag, False, "unavailable",
                          reason=f"cannot pull {distro.image} ({pull_err}) and a {distro.family} base "
                                 "cannot be bootstrapped on this host",
                          seconds=time.monotonic() - t0)
    try:
        debootstrap(client, distro, tag, log=log)
    except (RuntimeError, OSError, subprocess.CalledProcessError, APIError) as exc:
        return BaseResult(distro.name, tag, False, "unavailable",
                          reason=f"cannot pull {distro.image} ({pull_err}); {exc}", seconds=time.monotonic() - t0)
    return BaseResult(distro.name, tag, True, "debootstrap", seconds=time.monotonic() - t0)

"""Build an image from Dockerfile text through the Docker SDK (classic builder), logging every line.

Every build context gets the host's CA bundle as `deploylab-ca.crt`: behind a TLS-intercepting
proxy (here, and in many companies) pip and apt inside containers need it.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path

import docker
from docker.errors import BuildError, APIError

HOST_CA_CANDIDATES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
CA_NAME = "deploylab-ca.crt"


def host_ca_bundle() -> Path:
    for cand in HOST_CA_CANDIDATES:
        if Path(cand).is_file():
            return Path(cand)
    raise FileNotFoundError("no CA bundle on the host; looked in " + ", ".join(HOST_CA_CANDIDATES))


def _context(dockerfile: str, files: Mapping[str, Path | bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entries: dict[str, Path | bytes] = {"Dockerfile": dockerfile.encode(), CA_NAME: host_ca_bundle(), **files}
        for name, src in entries.items():
            if isinstance(src, Path) and src.is_dir():
                tar.add(str(src), arcname=name)
                continue
            data = src if isinstance(src, bytes) else Path(src).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0  # stable contexts keep the layer cache warm
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


class ImageBuildFailed(Exception):
    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


def build_image(client: docker.DockerClient, dockerfile: str, tag: str, log_path: Path,
                files: Mapping[str, Path | bytes] | None = None, buildargs: Mapping[str, str] | None = None,
                nocache: bool = False) -> float:
    """Build `tag`; stream the builder's output into log_path as it comes. Returns seconds taken.

    Raises ImageBuildFailed (with the whole log) when a step fails.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    lines: list[str] = []
    with open(log_path, "w") as log:
        try:
            stream = client.api.build(fileobj=_context(dockerfile, files or {}), custom_context=True, tag=tag,
                                      rm=True, forcerm=True, decode=True, nocache=nocache,
                                      buildargs=dict(buildargs or {}))
            for chunk in stream:
                text = chunk.get("stream") or chunk.get("status") or ""
                if "error" in chunk:
                    text = f"ERROR: {chunk['error']}\n"
                if text:
                    log.write(text if text.endswith("\n") else text + "\n")
                    log.flush()
                    lines.append(text)
                if "error" in chunk:
                    raise ImageBuildFailed(chunk["error"].strip(), "".join(lines))
        except (BuildError, APIError) as exc:
            raise ImageBuildFailed(str(exc), "".join(lines)) from None
    return time.monotonic() - t0

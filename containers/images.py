"""Build or get an image from a Jinja template: the one way every stage, bench and router gets its images.

The toolkit knows no template folder of its own (it sits below images/): callers pass a template
name and the folders to look in. Every template sees `ca_file`, the host CA bundle's name in the
build context (containers/build.py puts it there). Templates are strict: a missing variable is an
error at render time, not an empty string in a Dockerfile.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2

from containers.build import CA_NAME, build_image

Files = Mapping[str, Path | bytes]


@functools.cache
def _environment(search_path: tuple[str, ...]) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(list(search_path)), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)


def environment(search_path: Path | Sequence[Path]) -> jinja2.Environment:
    """The Jinja environment over these template folders (cached per folder list)."""
    paths = [search_path] if isinstance(search_path, (str, Path)) else list(search_path)
    return _environment(tuple(str(p) for p in paths))


def render(template: str, search_path: Path | Sequence[Path], **context) -> str:
    """Render the template named `template` (relative to a folder of search_path)."""
    return environment(search_path).get_template(template).render({"ca_file": CA_NAME, **context})


def exists(client, tag: str) -> bool:
    from docker.errors import ImageNotFound
    try:
        client.images.get(tag)
        return True
    except ImageNotFound:
        return False


def pull(client, image: str, tag: str) -> str | None:
    """Pull `image` ("repo[:ref]") and tag it `tag`; the error's first line when the engine cannot
    get it (no registry reachable), else None."""
    from docker.errors import DockerException
    repo, _, ref = image.rpartition(":")
    try:
        img = client.images.pull(repo or image, tag=ref or "latest")
    except DockerException as exc:  # APIError is one
        return str(getattr(exc, "explanation", None) or exc).splitlines()[0][:300]
    repo_t, _, ref_t = tag.rpartition(":")
    img.tag(repo_t, ref_t)
    return None


def import_rootfs(client, tarball: Path, tag: str, changes: Sequence[str] = ()) -> None:
    """`docker import`: a root filesystem tarball becomes image `tag`, with Dockerfile-style changes."""
    repo, _, ref = tag.rpartition(":")
    client.api.import_image_from_file(str(tarball), repository=repo, tag=ref, changes=list(changes))


@dataclass(frozen=True)
class Image:
    tag: str
    built: bool        # False: it was there already
    seconds: float     # spent building (0 when got)


def ensure_image(client, tag: str, template: str, search_path: Path | Sequence[Path], log_path: Path,
                 context: Mapping[str, object] | None = None, files: Files | None = None,
                 prepare: Callable[[], Files | None] | None = None, force: bool = False,
                 buildargs: Mapping[str, str] | None = None, nocache: bool = False) -> Image:
    """`tag` if the engine has it (and not force), else built from the rendered template.

    prepare: called only when a build is needed (make a base image, check a wheelhouse); the files
    it returns join the build context. Raises containers.build.ImageBuildFailed with the log.
    """
    if not force and exists(client, tag):
        return Image(tag, False, 0.0)
    t0 = time.monotonic()
    dockerfile = render(template, search_path, **(context or {}))
    extra = dict(files or {})
    if prepare is not None:
        extra.update(prepare() or {})
    build_image(client, dockerfile, tag, log_path, files=extra, buildargs=buildargs, nocache=nocache)
    return Image(tag, True, time.monotonic() - t0)

"""llama.cpp's image (Debian sid's llama.cpp-tools, from images/templates) and the test model as GGUF."""

from __future__ import annotations

import os
from pathlib import Path

from docker.errors import ImageNotFound

from containers.build import build_image
from containers.run import SCRIPTS, ContainerFailed, run_once, script_mount
from engines.spec import EngineSpec
from images.render import _env
from model.errors import UsageError

SCRIPT = Path(__file__).with_name("resources") / "hf_to_gguf.py"  # container-side, mounted alone


def dockerfile(spec: EngineSpec, base_image: str) -> str:
    return _env().get_template(spec.obtain.template).render(base_image=base_image, packages=spec.obtain.packages)


def ensure_image(client, spec: EngineSpec, log_path: Path, force: bool = False) -> tuple[str, float]:
    """Build the engine image from its template unless it exists; (tag, seconds spent building)."""
    tag = spec.obtain.image
    if not force:
        try:
            client.images.get(tag)
            return tag, 0.0
        except ImageNotFound:
            pass
    from images.bases import base_tag, ensure_base
    from model import spec as specmod
    distro = next((c.distro for c in specmod.load().cells if c.distro.name == spec.obtain.base), None)
    if distro is None:
        raise UsageError(f"engines/{spec.name}.toml: obtain.base: no distro {spec.obtain.base!r} in the matrix spec")
    res = ensure_base(client, distro)
    if not res.available:
        raise UsageError(f"{base_tag(distro)}: base image unavailable: {res.reason}")
    return tag, build_image(client, dockerfile(spec, base_tag(distro)), tag, log_path)


def ensure_gguf(client, hf_dir: Path, image: str) -> Path:
    """hf_dir's model as <hf_dir>-gguf/model.gguf, converted once inside the engine image."""
    out = hf_dir.with_name(hf_dir.name + "-gguf")
    if (out / "model.gguf").is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        run_once(client, image, ["python3", f"{SCRIPTS}/{SCRIPT.name}", "/hf", "/out/model.gguf"], role="engine",
                 labels={"org.deploylab.purpose": "gguf"}, user=f"{os.getuid()}:{os.getgid()}", timeout_s=600,
                 ro={**script_mount(SCRIPT), "/hf": hf_dir}, rw={"/out": tmp}).check("GGUF conversion")
    except ContainerFailed as exc:
        raise UsageError(f"GGUF conversion of {hf_dir} in {image} failed: {str(exc)[-600:]}") from None
    if not (tmp / "model.gguf").is_file():
        raise UsageError(f"GGUF conversion of {hf_dir} wrote no model.gguf")
    (tmp / "model.gguf").chmod(0o644)
    tmp.rename(out)
    return out

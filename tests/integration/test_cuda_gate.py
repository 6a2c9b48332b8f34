"""The CUDA gate: the image's nvcc against the CUDA of the torch PyPI serves for the pin (real PyPI,
range reads of the real wheel's METADATA)."""

from __future__ import annotations

from images.preflight import cuda_gates
from images.sources import torch_cuda_of
from tests.conftest import ROOT

TREE = ROOT / "tests" / "fixtures" / "vllm-0.33.0"


def test_pypi_torch_2_14_0_is_a_cuda_13_build():
    assert torch_cuda_of("2.14.0", "3.13") == "13.0"


def test_distro_toolkit_12_4_fails_the_gate_and_a_13_0_toolkit_passes(default_matrix):
    cell = default_matrix.get("debian-trixie-cuda")
    # nvcc 12.4: what deploylab/toolchain:debian-trixie-cuda's probe read (Debian's nvidia-cuda-toolkit).
    [bad] = cuda_gates(cell, TREE, {"nvcc": "12.4", "python": "3.13.5"})
    assert bad.status == "fail" and bad.category == "cuda-version-mismatch" and not bad.fixable
    assert "nvcc 12.4 vs torch's CUDA 13.0" in bad.evidence and "requirements/build/cuda.txt" in bad.evidence
    [good] = cuda_gates(cell, TREE, {"nvcc": "13.0", "python": "3.13.5"})
    assert good.status == "pass"
    assert cuda_gates(default_matrix.get("debian-trixie-cpu"), TREE, {"nvcc": ""}) == []

"""The runtime image's requirements from the engine tree and the torch the build recorded."""

from __future__ import annotations

from images.runtime import runtime_requirements


def test_the_tree_and_the_recorded_torch_make_the_requirements(tmp_path):
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "common.txt").write_text("-r other.txt\ntorch==2.9\nfastapi>=0.1  # api\n\n")
    assert runtime_requirements(tmp_path, "2.14.0+cu130").splitlines() == [
        "torch==2.14.0", "intel-openmp; platform_machine == 'x86_64'", "ml_dtypes", "fastapi>=0.1"]


def test_no_common_txt_and_no_torch_recorded_pin_nothing_of_theirs(tmp_path):
    """tests/fixtures/tiny-engine: no requirements/common.txt, no torch in the build; the stage once
    crashed here (FileNotFoundError, stored as internal-error) and would have pinned `torch==`."""
    assert runtime_requirements(tmp_path, "").splitlines() == ["intel-openmp; platform_machine == 'x86_64'", "ml_dtypes"]

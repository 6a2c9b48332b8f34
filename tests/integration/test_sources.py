"""Engine sources from PyPI (the real index, sha256-checked) and local trees."""

from __future__ import annotations

import pytest

from images.sources import copy_tree, fetch_engine
from model.errors import UsageError
from model.spec import EngineSource


def test_sdist_from_pypi_is_downloaded_checked_and_unpacked_once(tmp_path):
    tree = fetch_engine(EngineSource("pypi", "0.33.0"), tmp_path)
    assert (tree / "CMakeLists.txt").is_file() and (tree / "requirements/build/cpu.txt").is_file()
    mtime = (tmp_path / "vllm-0.33.0.tar.gz").stat().st_mtime
    assert fetch_engine(EngineSource("pypi", "0.33.0"), tmp_path) == tree
    assert (tmp_path / "vllm-0.33.0.tar.gz").stat().st_mtime == mtime
    copy = copy_tree(tree, tmp_path / "cell" / "src")
    assert (copy / "setup.py").read_bytes() == (tree / "setup.py").read_bytes()


def test_a_version_without_an_sdist_is_one_clear_line(tmp_path):
    with pytest.raises(UsageError, match=r"vllm==0\.0\.999: PyPI lists no sdist vllm-0\.0\.999\.tar\.gz"):
        fetch_engine(EngineSource("pypi", "0.0.999"), tmp_path)


def test_a_path_that_is_not_a_source_tree_is_refused(tmp_path):
    with pytest.raises(UsageError, match="not a vLLM source tree"):
        fetch_engine(EngineSource.parse(str(tmp_path)), tmp_path)

"""The build's container-side scripts (images/resources/) run by BuildState in a real build container
of the bookworm toolchain image: the deps phase supplies oneDNN from Debian's source packages (network:
Debian's mirror) and puts it in the env the later phases get; a fix's DEPLOYLAB_PRE runs before the
wheel script. No vLLM compile (that is test_full_build, longbuild)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from images.build import RESOURCES, BuildContainer, BuildState, Workspace, deps_command
from images.fixes import offline_inputs

pytestmark = pytest.mark.docker
TREE = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.33.0"
CELL = "debian-bookworm-cpu"


def test_deps_phase_supplies_onednn_from_debian_sources(docker_client, default_matrix, tmp_path):
    cell = default_matrix.get(CELL)
    try:
        docker_client.images.get(cell.toolchain_tag)
    except Exception:
        pytest.skip(f"{cell.toolchain_tag} not built yet (invoke build --cell {CELL})")
    ws = Workspace(tmp_path / "cell", tmp_path / "cache")
    shutil.copytree(TREE, ws.src)
    st = BuildState(cell, offline_inputs(ws.src), {"VLLM_TARGET_DEVICE": "cpu", "DEPLOYLAB_PRE": ""})
    script, args = deps_command(cell, st.inputs)
    assert script.parent == RESOURCES and args[2:] == ["onednn", "onednn", "v3.13"]
    with BuildContainer(docker_client, cell.toolchain_tag, ws, st.env, tmp_path / "logs") as bc:
        a = st.run(bc, "deps", script, args)
        st.read_deps(a)
        assert a.exit_code == 0, a.log[-2000:]
        onednn = st.offline["onednn"]
        assert onednn.asked == "v3.13" and onednn.got.startswith("onednn-3."), (onednn, a.log[-2000:])
        assert st.env["FETCHCONTENT_SOURCE_DIR_ONEDNN"] == f"/deps/{onednn.got}"
        assert (ws.deps / onednn.got / "CMakeLists.txt").is_file()
        # the env the deps phase set reaches a later phase's exec, and DEPLOYLAB_PRE runs before wheel.sh
        st.env["DEPLOYLAB_PRE"] = "echo pre-ran $FETCHCONTENT_SOURCE_DIR_ONEDNN; exit 7"
        w = st.run(bc, "wheel", RESOURCES / "wheel.sh", env=st.env)
        assert (w.exit_code, w.log.splitlines()[0]) == (7, f"pre-ran /deps/{onednn.got}")
    assert [x.phase for x in st.attempts] == ["deps", "wheel"]
    header = (tmp_path / "logs" / "deps.log").read_text().splitlines()[1]
    assert header.startswith("# $ /deploylab/deps-debian.sh ")

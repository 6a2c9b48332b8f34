"""The matrix spec: layers, frozen cells, stable ids, one-line errors for every malformed input."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import spec
from model.errors import UsageError
from tests.strategies import toml_documents

MACHINE = spec.Machine(cores=2, mem_gib=24.0)


def load_text(tmp_path, text, sets=()):
    p = tmp_path / "m.toml"
    p.write_text(text)
    return spec.load(p, sets, machine=MACHINE)


def test_default_matrix_has_the_eight_cells(default_matrix):
    ids = [c.id for c in default_matrix.cells]
    for distro in ("debian-bookworm", "debian-trixie", "debian-sid", "fedora-44"):
        assert f"{distro}-cpu" in ids and f"{distro}-cuda" in ids
    sid = default_matrix.get("debian-sid-cpu")
    assert sid.distro.python == "3.14" and sid.distro.apt_check_valid_until is False
    fed = default_matrix.get("fedora-44-cpu")
    assert fed.family == "fedora" and fed.distro.python == "3.14"


def test_cells_are_frozen_and_ids_stable(default_matrix):
    again = spec.load()
    assert [c.id for c in again.cells] == [c.id for c in default_matrix.cells]
    with pytest.raises(dataclasses.FrozenInstanceError):
        default_matrix.cells[0].target = "cuda"  # type: ignore[misc]


def test_max_jobs_auto_is_capped_by_memory():
    assert spec.resolve_jobs("auto", 4, spec.Machine(cores=16, mem_gib=24)) == 6
    assert spec.resolve_jobs("auto", 4, spec.Machine(cores=2, mem_gib=24)) == 2
    assert spec.resolve_jobs("auto", 4, spec.Machine(cores=8, mem_gib=3)) == 1
    assert spec.resolve_jobs(3, 4, spec.Machine(cores=1, mem_gib=1)) == 3


def test_layers_override_in_order(tmp_path):
    m = load_text(tmp_path, """
[matrix]
distros = ["debian-trixie", "debian-sid"]
targets = ["cpu", "cuda"]
exclude = [{distro = "debian-sid", target = "cuda"}]
[knobs]
max_jobs = 3
[[overrides]]
select = "debian-sid-*"
tcmalloc = false
""", sets=["knobs.numactl=false", "max_jobs=1"])
    assert [c.id for c in m.cells] == ["debian-trixie-cpu", "debian-trixie-cuda", "debian-sid-cpu"]
    assert all(c.knobs.max_jobs == 1 and not c.knobs.numactl for c in m.cells)
    assert m.get("debian-sid-cpu").knobs.tcmalloc is False
    assert m.get("debian-trixie-cpu").knobs.tcmalloc is True


def test_include_adds_an_engine_cell_with_its_own_id(tmp_path):
    m = load_text(tmp_path, """
[matrix]
distros = ["debian-trixie"]
include = [{distro = "debian-trixie", target = "cpu", engine = "0.32.0"}]
""")
    assert [c.id for c in m.cells] == ["debian-trixie-cpu", "debian-trixie-cpu-vllm-0.32.0"]


@pytest.mark.parametrize("text, expected", [
    ("[knobs]\nmax_job = 2\n", "m.toml: knobs.max_job: unknown key (did you mean 'max_jobs'?)"),
    ("[knobs]\nmax_jobs = \"many\"\n", "m.toml: knobs.max_jobs: expected a positive integer or \"auto\""),
    ("[knobs]\nnumactl = 1\n", "m.toml: knobs.numactl: expected true or false"),
    ("[matrx]\n", "m.toml: matrx: unknown key (did you mean 'matrix'?)"),
    ("[matrix]\ntargets = [\"cpu\", \"rocm\"]\n", "m.toml: matrix.targets: item 1: expected one of cpu, cuda"),
    ("[matrix]\ndistros = [\"debian-trixy\"]\n", "did you mean 'debian-trixie'?"),
    ("[knobs\n", "m.toml: not valid TOML"),
    ("[[overrides]]\nselect = 3\n", "m.toml: overrides[0].select: expected a glob string"),
    ("[distros.x]\nfamily = \"arch\"\n", "m.toml: distros.x.family: expected one of debian, fedora"),
])
def test_malformed_specs_name_file_and_key(tmp_path, text, expected):
    with pytest.raises(UsageError) as err:
        load_text(tmp_path, text)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_set_names_the_flag(tmp_path):
    with pytest.raises(UsageError, match=r"--set: knobs.max_jobs: expected a positive integer"):
        load_text(tmp_path, "", sets=["max_jobs=0"])
    with pytest.raises(UsageError, match=r"expected KEY=VALUE"):
        load_text(tmp_path, "", sets=["max_jobs"])


def test_unknown_cell_suggests_the_nearest(default_matrix):
    with pytest.raises(UsageError, match="did you mean 'debian-trixie-cpu'"):
        default_matrix.get("debian-trixie-cpux")


docs = toml_documents(["matrix", "knobs", "distros", "overrides", "max_jobs", "targets", "select", "family",
                       "engines", "include", "exclude", "tcmalloc"], int_hi=50, max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=docs)
def test_fuzzed_documents_give_usage_errors_only(doc):
    """Any structure: either a valid matrix or a UsageError; never another exception."""
    try:
        spec.validate_layer(doc, "fuzz.toml")
        spec.expand(spec.merge(spec.read_toml(spec.BUILTIN), doc), "fuzz.toml", MACHINE)
    except UsageError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200))
def test_fuzzed_bytes_give_usage_errors_only(tmp_path_factory, raw):
    p = tmp_path_factory.mktemp("fuzz") / "f.toml"
    p.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    try:
        spec.load(p, machine=MACHINE)
    except UsageError as exc:
        assert str(exc).startswith(str(p))

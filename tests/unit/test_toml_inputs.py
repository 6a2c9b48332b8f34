"""Every TOML file the project ships for a user to edit goes through model.toml (a Strict schema, one
line per fault): the inventory below must name each tracked file, so a new one cannot bypass it."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def _loaders():
    from engines.spec import load_engine
    from images import classify, fixes, gates, render
    from kvlab import inputs
    from model import spec
    from smoke import conform, mix, profiles
    from smoke.sweep import capacity, hol_probe, knobs
    return {
        "model/defaults.toml": lambda: spec.load(),
        "matrix/default.toml": lambda: spec.load(),
        "images/fixes.toml": fixes.fixes,
        "images/offline.toml": fixes.offline,
        "images/gates.toml": gates.load_config,
        "images/rules.toml": classify.load_rules,
        "images/packages.toml": lambda: render.load_packages(render.PACKAGES),
        "kvlab/cases.toml": lambda: inputs.check(),
        "kvlab/tolerances.toml": lambda: inputs.check(),
        "smoke/conform.toml": conform.load_checks,
        "smoke/sweep/capacity.toml": capacity.load_rules,
        "smoke/sweep/hol_probe.toml": hol_probe.load_rules,
        "smoke/sweep/hol_probe_busy.toml": lambda: hol_probe.load_rules(hol_probe.rules_file("busy")),
        "smoke/sweep/knobs.toml": knobs.load_intents,
        **{f"engines/{p.name}": (lambda n=p.stem: load_engine(n)) for p in (ROOT / "engines").glob("*.toml")},
        **{f"smoke/mixes/{p.name}": (lambda p=p: mix.load(p)) for p in (ROOT / "smoke/mixes").glob("*.toml")},
        **{f"smoke/profiles/{p.name}": (lambda p=p: profiles.load(p))
           for p in (ROOT / "smoke/profiles").glob("*.toml")},
        **{f"smoke/profiles/variants/{p.name}": (lambda p=p: profiles.load(p))
           for p in (ROOT / "smoke/profiles/variants").glob("*.toml")},
    }


def _shipped() -> set[str]:
    skip = ("tests/", "notes/", ".", "kvlab/csrc/", "out/")          # out/: ignored run outputs
    return {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.toml")
            if not str(p.relative_to(ROOT)).startswith(skip) and p.name != "pyproject.toml"
            and ".venv" not in p.parts and ".work" not in p.parts}


def test_every_shipped_toml_has_a_schema_loader():
    shipped, loaders = _shipped(), _loaders()
    assert len(shipped) >= 25
    assert shipped - set(loaders) == set(), "a TOML file no schema reads"
    for name in sorted(shipped):
        loaders[name]()  # the shipped file is valid against its schema


@pytest.mark.parametrize("file, old, new, expected", [
    ("cases.toml", "name = \"len-1\"\nlens = [1]", "name = \"len-1\"\nlens = [1]\nblok_size = 8",
     "case[0].blok_size: unknown key (did you mean 'block_size'?)"),
    ("cases.toml", 'dtype = "f32"', 'dtype = "f23"', "defaults.dtype: expected one of f32, bf16, fp8, got 'f23'"),
    ("tolerances.toml", "ext = 2e-5", "ext = \"2e-5\"", "stored.ext: expected a positive number (max absolute error)"),
    ("tolerances.toml", "fp8 = 2e-1", "fp9 = 2e-1", "source.fp9: unknown key (did you mean 'fp8'?)"),
])
def test_kvlab_inputs_faults_are_one_line(tmp_path, file, old, new, expected):
    from kvlab import inputs
    paths = {"cases.toml": tmp_path / "cases.toml", "tolerances.toml": tmp_path / "tolerances.toml"}
    for name, path in paths.items():
        text = (inputs.HERE / name).read_text()
        if name == file:
            assert old in text
            text = text.replace(old, new, 1)
        path.write_text(text)
    with pytest.raises(UsageError) as e:
        inputs.check(paths["cases.toml"], paths["tolerances.toml"])
    msg = str(e.value)
    assert msg.startswith(f"{paths[file]}: {expected}") and "\n" not in msg, msg


def test_a_packages_toml_typo_is_one_line_with_the_dashed_key(tmp_path):
    from images import render
    bad = tmp_path / "packages.toml"
    bad.write_text(render.PACKAGES.read_text().replace("cuda-distro = []", "cuda-distr = []", 1))
    with pytest.raises(UsageError, match=r"^\S+packages\.toml: fedora\.cuda-distr: unknown key "
                                         r"\(did you mean 'cuda-distro'\?\)$"):
        render.load_packages(bad)

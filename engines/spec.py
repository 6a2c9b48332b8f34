"""The engine files (engines/NAME.toml), validated through model.toml: one line per fault."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from model.errors import UsageError, did_you_mean
from model.toml import Strict, load

HERE = Path(__file__).parent
# The names as the matrix spells them; each has engines/<name>.toml.
NAMES = ("vllm", "vllm-cpu", "llama.cpp", "sglang", "tgi")
# The common metric names an engine's Prometheus series map onto.
COMMON_METRICS = ("queue_time_seconds", "ttft_seconds", "running", "waiting", "kv_usage", "prefix_queries",
                  "prefix_hits")


class Obtain(Strict):
    how: Literal["source-build", "pypi", "distro-package", "container-image"]
    image: str = ""               # the image that serves it ({cell} filled for a source build)
    package: str = ""             # pypi: the requirement
    base: str = ""                # distro-package: the project's base image distro
    template: str = ""            # distro-package: images/templates/<template>
    packages: list[str] = []
    default_cell: str = ""
    unavailable: str = ""         # set: the engine cannot be obtained here, and why


class Serve(Strict):
    # {model_dir} {served_name} {port} {context} (tokens per sequence), {sequences} and {context_total}
    # (context x sequences, for an engine that sizes one cache for all its slots) are filled in.
    command: list[str]
    sequences: int = 1            # requests the engine serves side by side (its slots)
    port: int
    model_format: Literal["hf", "gguf"]
    help: list[str]         # prints every flag the server accepts
    owned_by: str = ""            # what its /v1/models says owns a model: how a --url target is recognised
    health: str = "/health"
    ready: str = "/v1/models"
    startup_timeout_s: float = 300.0
    env: dict[str, str] = {}
    shm_size: str = ""


class Knob(Strict):
    flags: list[str]        # candidates, first accepted (per the engine's --help) wins
    type: Literal["int", "bool", "str"] = "int"


class Logs(Strict):
    rules: str = ""               # a rules file (images/classify.py format), relative to the project root


class Extensions(Strict):
    return_token_ids: bool = False   # vLLM: each chunk lists its token ids
    ignore_eos: bool = False         # vLLM: generate to max_tokens whatever the model says
    slots: bool = False              # llama.cpp: GET /slots


class EngineSpec(Strict):
    name: str
    what: str
    adapter: Literal["vllm", "llama.cpp", "unavailable"]
    obtain: Obtain
    serve: Serve | None = None
    knobs: dict[str, Knob] = {}
    metrics: dict[str, str] = {}
    logs: Logs = Logs()
    extensions: Extensions = Extensions()

    @property
    def unavailable(self) -> str:
        return self.obtain.unavailable


def check_name(name: str, where: str = "--engine") -> str:
    if name not in NAMES:
        raise UsageError(f"{where}: unknown engine {name!r}{did_you_mean(name, NAMES)} (known: {', '.join(NAMES)})")
    return name


@functools.cache
def load_engine(name: str, folder: Path = HERE) -> EngineSpec:
    path = folder / f"{check_name(name)}.toml"
    spec = load(EngineSpec, path)
    if spec.name != name:
        raise UsageError(f"{path}: name: expected {name!r} (the file's name), got {spec.name!r}")
    bad = [k for k in spec.metrics if k not in COMMON_METRICS]
    if bad:
        raise UsageError(f"{path}: metrics.{bad[0]}: expected a common metric name{did_you_mean(bad[0], COMMON_METRICS)} "
                         f"(known: {', '.join(COMMON_METRICS)})")
    if spec.adapter != "unavailable" and spec.serve is None:
        raise UsageError(f"{path}: serve: expected a [serve] table for adapter {spec.adapter!r}")
    if spec.adapter == "unavailable" and not spec.unavailable:
        raise UsageError(f"{path}: obtain.unavailable: expected the reason this engine cannot be obtained")
    return spec

"""One small adapter per engine kind: the parts of an engine that are code, not data.

The data (engines/NAME.toml) says how it is obtained and started; the adapter fills the command in,
maps its Prometheus series onto the common metric names, says which request-body extensions it
takes, and turns the project's test model into the format it serves (llama.cpp: GGUF).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.spec import EngineSpec, load_engine


class Adapter:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def unavailable(self) -> str:
        return self.spec.unavailable

    def image(self, cell: str = "") -> str:
        return self.spec.obtain.image.replace("{cell}", cell or self.spec.obtain.default_cell)

    def command(self, served_name: str, context: int, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
        assert self.spec.serve is not None
        s = self.spec.serve
        fill = {"{model_dir}": "/model", "{served_name}": served_name, "{port}": str(s.port),
                "{context_total}": str(context * s.sequences), "{context}": str(context), "{sequences}": str(s.sequences)}
        out = []
        for arg in self.spec.serve.command:
            for k, v in fill.items():
                arg = arg.replace(k, v)
            out.append(arg)
        return out + list(extra)

    def request_extras(self) -> dict[str, Any]:
        """Body fields beyond the OpenAI contract that this engine declares (and only those)."""
        ext = self.spec.extensions
        return {k: True for k in ("return_token_ids", "ignore_eos") if getattr(ext, k)}

    def common_metrics(self, samples: dict[str, float]) -> dict[str, float | None]:
        """Prometheus samples (name -> value, labels summed) -> the common names this engine maps.

        A histogram or summary maps by its base name: the mean is _sum / _count.
        """
        out: dict[str, float | None] = {}
        for common, prom in self.spec.metrics.items():
            if prom in samples:
                out[common] = samples[prom]
            elif f"{prom}_count" in samples:
                n = samples[f"{prom}_count"]
                out[common] = samples.get(f"{prom}_sum", 0.0) / n if n else None
            else:
                out[common] = None
        return out

    def model_for(self, client, hf_dir: Path, image: str) -> Path:
        """The folder to mount at /model for this engine (the HF model itself by default)."""
        return hf_dir


class VllmAdapter(Adapter):
    pass


class LlamaCppAdapter(Adapter):
    def model_for(self, client, hf_dir: Path, image: str) -> Path:
        from engines.llamacpp import ensure_gguf
        return ensure_gguf(client, hf_dir, image)


class UnavailableAdapter(Adapter):
    pass


KINDS = {"vllm": VllmAdapter, "llama.cpp": LlamaCppAdapter, "unavailable": UnavailableAdapter}


def adapter(name: str) -> Adapter:
    spec = load_engine(name)
    return KINDS[spec.adapter](spec)


def by_owner(owned_by: str) -> Adapter | None:
    """The adapter of the engine whose /v1/models says `owned_by` (how a --url target is recognised)."""
    from engines.spec import NAMES
    for name in NAMES:
        spec = load_engine(name)
        if spec.serve is not None and owned_by and spec.serve.owned_by == owned_by:
            return KINDS[spec.adapter](spec)
    return None

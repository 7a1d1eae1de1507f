"""The one place a backend is chosen: `load_role(params, "policy" | "optimizer")` -> a `Model`.

`lm.<role>_backend` names the backend: `local` (transformers here), `openai` (an
OpenAI-compatible server, section `openai_<role>`), or a plugin's: any package can add one
through the entry-point group `ads.backends`, whose entry point is a factory
`make(params, role, cache) -> Model` (the tests register a fake model this way).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

from ..cache import CallCache
from ..errors import AdsError
from ..params import BACKEND_ENTRY_POINTS, uses_lora
from ..paths import Paths
from ..progress import phase
from ..sources import Lock
from .base import Model


def role_source(params: dict, role: str, paths: Paths) -> tuple[str, Path, Lock]:
    """What `lm.<role>` names (a local path resolved in the project), the sources cache and the lock."""
    source = params["lm"][role]
    if not source.startswith(("pypi:", "hf:")):
        source = str(paths.resolve(source, f"lm.{role}"))
    cache_dir = paths.resolve(params["sources"]["cache_dir"], "sources.cache_dir").expanduser()
    return source, cache_dir, Lock(paths.resolve(params["sources"]["lock"], "sources.lock"))


def call_cache(params: dict, paths: Paths) -> CallCache:
    """The persistent call cache `lm.cache` / `lm.call_cache` name (a disabled one when off)."""
    p = params["lm"]
    if not p["cache"]:
        return CallCache(None)
    if p["call_cache"]:
        return CallCache(paths.resolve(p["call_cache"], "lm.call_cache"))
    return CallCache(paths.resolve(params["sources"]["cache_dir"], "sources.cache_dir").expanduser() / "calls.sqlite")


def load_role(params: dict, role: str, paths: Paths | None = None) -> Model:
    """The model that params name for `role` ("policy" or "optimizer"), with the project's settings."""
    with phase("loading models"):
        model = _load(params, role, paths or Paths.here())
    model.role = role  # names its phases in logs/<stage>.json
    return model


def _load(params: dict, role: str, paths: Paths) -> Model:
    backend = params["lm"][f"{role}_backend"]
    if backend == "local":
        from .local import LocalModel
        from .weights import load_weights

        source, cache_dir, lock = role_source(params, role, paths)
        # LoRA trains through the linear layers, which oneDNN's packed ones do not allow
        gemm = "blas" if uses_lora(params) else params["lm"]["gemm"]
        model, tokenizer, digest = load_weights(source, cache_dir, lock, threads=params["lm"]["threads"],
                                               dtype=params["lm"]["dtype"], gemm=gemm)
        return LocalModel(model, tokenizer, digest, source, batch_size=params["lm"]["batch_size"], cache=call_cache(params, paths),
                          batch_tokens=params["lm"]["batch_tokens"])
    if backend == "openai":
        from .openai import OpenAIModel
        from .weights import load_tokenizer

        source, cache_dir, lock = role_source(params, role, paths)
        return OpenAIModel(params[f"openai_{role}"], f"openai_{role}", call_cache(params, paths),
                           load_tokenizer(source, cache_dir, lock))
    for ep in entry_points(group=BACKEND_ENTRY_POINTS):
        if ep.name == backend:
            return ep.load()(params, role, call_cache(params, paths))
    raise AdsError(f"params: lm.{role}_backend: no backend named {backend!r}")

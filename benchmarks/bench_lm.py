"""The LM engine on the default model: naive vs batched generation, warm cache, shared prefix.

    ads prepare && python benchmarks/bench_lm.py [--prompts 64] [--new-tokens 64] [--scoring-only] [--no-int8] [--bf16]
        [--set lm.dtype=bf16] [--json PATH]

1. 64 chat prompts of 150-400 tokens (Wikipedia summaries to summarise), 64 new tokens each:
   one prompt at a time (naive) vs batched; then the batched run again with the cache warm.
2. 5 questions over one shared 800-token context: prefix KV cache reused vs recomputed.
3. Likelihood scoring: 16 (prompt, reference) pairs sharing one trajectory's prompt, in one
   call (shared prefix, batched) vs each pair on its own.
4. The KV cache written in place against concatenated at every step, and the prompts computed
   row by row against the padded batch at once (16 of the prompts each); a trajectory's
   questions after their shared prefix packed into one forward pass against each alone; the
   optimizer's constrained decoding against unconstrained, on its own prompts; a
   trajectory's prompts answered then scored, with the prefix KV cache kept between the two
   calls against computed in each; the scoring with the engine's grouped-head attention against
   transformers' SDPA.
5. The engine's oneDNN linear layers (lm.gemm=onednn, the default) against torch's BLAS
   (lm.gemm=blas) on the same pairs and prompts; lm.dtype=int8 (unless --no-int8) and, with
   --bf16, lm.dtype=bf16 against fp32. `--set lm.dtype=bf16` runs the whole benchmark on
   bfloat16 instead (and leaves these comparisons out).
6. Peak RSS (of the engine; and of the whole run, where each compared engine is loaded after the
   one before is dropped), and the memory-bandwidth bound on batch-1 decoding: every generated
   token reads all the weights once, so tokens/s <= measured copy bandwidth / weight bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ads_cli.engine import local as local_engine, weights
from ads_cli.engine.local import LocalModel
from ads_cli.engine.roles import load_role
from ads_cli.method.policy import example_messages
from ads_cli import params as params_mod
from ads_cli.cache import CallCache
from ads_cli.jsonl import read_jsonl


def make_prompts(model: LocalModel, docs: list[dict], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    while len(prompts) < n:
        target = rng.randint(150, 400)
        text = ""
        while model.count_tokens(model.render(f"Summarize in one sentence:\n{text}")) < target:
            text += rng.choice(docs)["text"] + "\n"
        words = text.split()
        while model.count_tokens(model.render("Summarize in one sentence:\n" + " ".join(words))) > target:
            words = words[:-5]
        prompts.append("Summarize in one sentence:\n" + " ".join(words))
    return prompts


@contextlib.contextmanager
def engine_setting(name: str, value):
    """The local engine's module setting `name` (MIN_SHARED_PREFIX, KEPT_PREFIXES, GROW_IN_PLACE, ROW_PREFILL, PACK_TOKENS)
    set to `value` for the block: the naive side of a comparison."""
    default = getattr(local_engine, name)
    setattr(local_engine, name, value)
    try:
        yield
    finally:
        setattr(local_engine, name, default)


def add_set_option(ap: argparse.ArgumentParser, more: str = "") -> None:
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="A params override for the whole benchmark, e.g. lm.dtype=bf16 (repeatable)." + more)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bandwidth_gb_s(size_mb: int = 256, repeats: int = 5) -> float:
    """Copy bandwidth over two buffers of `size_mb` (far larger than the caches)."""
    src = torch.ones(size_mb * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src))[1] for _ in range(repeats))
    return 2 * src.numel() * 4 / best / 1e9  # a copy reads and writes every byte


def scoring_pairs(model, docs: list[dict], seed: int) -> list[tuple[str, str]]:
    """One trajectory's prompt as `ads train` scores it (3 collected passages, then 3
    demonstrations) shared by 8 held-out questions, 2 references each."""
    rng = random.Random(seed)
    picked = rng.sample(docs, 14)
    passages = "\n\n".join(f"{d['title']}: {d['text']}" for d in picked[:3])
    demos = [{"input": f"What is {d['title']}?", "reference": d["description"] or d["title"]} for d in picked[3:6]]
    pairs = []
    for d in picked[6:14]:
        prompt = model.render(example_messages(f"What is {d['title']}?", passages, demos))
        pairs += [(prompt, d["description"] or d["title"]), (prompt, d["title"])]
    return pairs


def scoring(model, pairs: list[tuple[str, str]]) -> dict:
    """The pairs scored in one call (the shared prefix computed once, batched) against each pair
    on its own."""
    n_tokens = sum(model.count_tokens(c + r) for c, r in pairs)
    model.cache = CallCache(None)
    model.forget_prefixes()
    separate, t_separate = timed(lambda: [model.loglikelihood([p])[0] for p in pairs])
    shared, t_shared = timed(lambda: model.loglikelihood(pairs))
    diff = max(abs(a - b) for a, b in zip(separate, shared))
    print(f"\nlikelihood scoring, {len(pairs)} pairs sharing one prompt prefix ({n_tokens} tokens in all):")
    print(f"  each pair on its own {t_separate:.2f}s, shared prefix + batched {t_shared:.2f}s: {t_separate / t_shared:.1f}x;"
          f" max |difference| {diff:.2e} nats")
    return {"ratio": t_separate / t_shared, "shared_s": t_shared, "values": shared}


def grouped_attention(model, pairs: list[tuple[str, str]], rounds: int = 3) -> dict:
    """Likelihood scoring of the pairs with the engine's attention (a padded batch's grouped heads
    as they are, `engine/attention.py`) against transformers' SDPA (which repeats them first),
    alternating, `rounds` each: the median times, and whether the scores are the same bits."""
    from ads_cli.engine import attention

    times: dict[str, list[float]] = {"sdpa": [], attention.NAME: []}
    scores = {}
    model.cache = CallCache(None)
    try:
        for _ in range(rounds):
            for name in times:
                model.model.set_attn_implementation(name)
                model.forget_prefixes()
                scores[name], t = timed(lambda: model.loglikelihood(pairs))
                times[name].append(t)
    finally:
        model.model.set_attn_implementation(attention.NAME)
    repeated, grouped = statistics.median(times["sdpa"]), statistics.median(times[attention.NAME])
    same = scores["sdpa"] == scores[attention.NAME]
    print(f"\nscoring the same {len(pairs)} pairs, attention of the padded batch, median of {rounds}:")
    print(f"  transformers' SDPA (key/value heads repeated) {repeated:.2f}s, grouped heads as they are {grouped:.2f}s:"
          f" {repeated / grouped:.2f}x; identical scores: {same}")
    return {"grouped_attention_vs_repeated": repeated / grouped, "grouped_attention_identical_scores": same}


def kept_prefix(model, pairs: list[tuple[str, str]], new_tokens: int) -> dict:
    """A trajectory's prompts answered then scored, as `ads train` and `ads evaluate` do: with the
    prefix KV cache kept between the two calls against computed in each (KEPT_PREFIXES = 0)."""
    prompts = list(dict.fromkeys(c for c, _ in pairs))
    times, values = {}, {}
    for name, kept in (("computed in each call", 0), ("kept between calls", local_engine.KEPT_PREFIXES)):
        model.cache = CallCache(None)
        model.forget_prefixes()
        with engine_setting("KEPT_PREFIXES", kept):
            (_, values[name]), times[name] = timed(lambda: (model.generate(prompts, max_new_tokens=new_tokens, chat=False),
                                                            model.loglikelihood(pairs)))
    same = values["computed in each call"] == values["kept between calls"]
    ratio = times["computed in each call"] / times["kept between calls"]
    print(f"\n{len(prompts)} prompts answered ({new_tokens} new tokens) then {len(pairs)} pairs scored:"
          f" prefix computed in each call {times['computed in each call']:.2f}s, kept between calls"
          f" {times['kept between calls']:.2f}s: {ratio:.2f}x; identical scores: {same}")
    return {"kept_prefix_vs_recomputed": ratio}


def setting_off_and_on(model, prompts: list[str], new_tokens: int, setting: str, off: str, on: str, values=(False, True),
                       chat: bool = True) -> tuple[float, int]:
    """Batched generation of the same prompts with the engine's `setting` off, then on (the
    default; `values` are the two): (off's time / on's, how many texts are identical)."""
    times, texts = {}, {}
    for name, value in zip((off, on), values):
        model.cache = CallCache(None)
        model.forget_prefixes()
        with engine_setting(setting, value):
            gens, times[name] = timed(lambda: model.generate(prompts, max_new_tokens=new_tokens, chat=chat))
        texts[name] = [g.text for g in gens]
    same = sum(a == b for a, b in zip(texts[off], texts[on]))
    ratio = times[off] / times[on]
    print(f"  {off} {times[off]:.2f}s, {on} {times[on]:.2f}s: {ratio:.2f}x; identical texts {same}/{len(prompts)}")
    return ratio, same


def in_place_kv(model, prompts: list[str], new_tokens: int) -> dict:
    """Batched generation with each batch's KV cache written into one buffer (GROW_IN_PLACE,
    the default) against transformers' concatenation at every step, on the same prompts."""
    print(f"\nKV cache, {len(prompts)} prompts batched, {new_tokens} new tokens:")
    ratio, _ = setting_off_and_on(model, prompts, new_tokens, "GROW_IN_PLACE", "concatenated at every step", "written in place")
    return {"kv_in_place_vs_concat": ratio}


def row_prefill(model, prompts: list[str], new_tokens: int) -> dict:
    """Each prompt computed on its own, then the batch decoded together (ROW_PREFILL, the
    default) against the left-padded batch's prompts computed as one, on the same prompts."""
    print(f"\nprefill, {len(prompts)} prompts batched, {new_tokens} new tokens:")
    ratio, same = setting_off_and_on(model, prompts, new_tokens, "ROW_PREFILL", "the padded batch at once", "row by row")
    return {"row_prefill_vs_batch": ratio, "row_prefill_identical_answers": same}


def packed_prefill(model, pairs: list[tuple[str, str]], new_tokens: int) -> dict:
    """A trajectory's prompts answered, as `ads train` does: their questions after the shared
    prefix computed several to a forward pass (PACK_TOKENS, the default) against each alone."""
    prompts = list(dict.fromkeys(c for c, _ in pairs))
    print(f"\n{len(prompts)} prompts of one trajectory after their shared prefix, {new_tokens} new tokens:")
    ratio, same = setting_off_and_on(model, prompts, new_tokens, "PACK_TOKENS", "each row alone", "rows packed",
                                     values=(0, local_engine.PACK_TOKENS), chat=False)
    return {"packed_prefill_vs_alone": ratio, "packed_prefill_identical_answers": same}


def constrained_cost(params: dict, model, docs_tasks: list[dict]) -> dict:
    """The optimizer's constrained decoding (a grammar check per row at every step) against
    unconstrained decoding, on the optimizer's own iteration-1 prompts, sampled as `ads sample` does."""
    from ads_cli.method.optimizer import STOP, build_prompt, call_grammar, seed_exemplars

    apis = ["retrieve", "demonstrate", "answer"]
    descriptions = [f"{a}: <argument>" for a in apis]
    prompts = [build_prompt(t, [{"answer": "?", "score": 0.0}] * len(t["observed"]), seed_exemplars()[:4], descriptions)
               for t in docs_tasks[:16]]
    s = params["sample"]
    times = {}
    for name, grammar in (("unconstrained", None), ("constrained", call_grammar(apis))):
        model.cache = CallCache(None)
        model.forget_prefixes()  # the same prompts: the second run must not continue from the first's prefix
        _, times[name] = timed(lambda: model.generate(prompts, max_new_tokens=s["max_new_tokens"], temperature=s["temperature"],
                                                      stop=STOP, chat=False, grammar=grammar))
    print(f"\noptimizer decoding, {len(prompts)} prompts, {s['max_new_tokens']} new tokens, temperature {s['temperature']}:"
          f" unconstrained {times['unconstrained']:.2f}s, constrained {times['constrained']:.2f}s"
          f" ({times['constrained'] / times['unconstrained']:.2f}x the time)")
    return {"constrained_vs_unconstrained": times["constrained"] / times["unconstrained"]}


def bits_per_byte(values: list[float], pairs: list[tuple[str, str]]) -> list[float]:
    return [v / math.log(2) / len(r.encode("utf-8")) for v, (_, r) in zip(values, pairs)]


def other_engine(params_path: str, overrides: list[str], override: str, pairs, prompts, new_tokens: int, ours_scoring: dict,
                 ours_batched: dict) -> dict:
    """The policy loaded with the benchmark's `overrides` and one lm setting more (`override`), on
    the same pairs and prompts as the benchmark's engine: its scoring and batched-generation seconds, its largest likelihood
    difference from the default's in bits per byte, and how many answers are identical."""
    params = params_mod.load(params_path, [*overrides, override])
    other = load_role(params, "policy")
    other.cache = CallCache(None)
    # the default engine is timed after many calls; this one's first calls would pay its kernels'
    # creation and its buffers' first page faults inside the timing, so the same work runs once first
    other.loglikelihood(pairs)
    other.generate(prompts[:2], max_new_tokens=4)
    other.forget_prefixes()
    values, t_score = timed(lambda: other.loglikelihood(pairs))
    gens, t_gen = timed(lambda: other.generate(prompts, max_new_tokens=new_tokens))
    bpb_diff = max(abs(a - b) for a, b in zip(bits_per_byte(values, pairs), bits_per_byte(ours_scoring["values"], pairs)))
    same = sum(a.text == b.text for a, b in zip(gens, ours_batched["gens"]))
    del other
    weights.unload_all()
    return {"score_s": t_score, "generate_s": t_gen, "bpb_diff": bpb_diff, "same": f"{same}/{len(prompts)}"}


def gemm_comparison(params_path: str, overrides: list[str], pairs, prompts, new_tokens: int, ours_scoring: dict, ours_batched: dict) -> dict:
    """lm.gemm=blas (torch's BLAS, the engine before oneDNN) against the default oneDNN layers on
    the same pairs and prompts: speed, the largest likelihood difference, identical answers."""
    blas = other_engine(params_path, overrides, "lm.gemm=blas", pairs, prompts, new_tokens, ours_scoring, ours_batched)
    t_score, t_gen = blas["score_s"], blas["generate_s"]
    print(f"\nlinear layers through oneDNN (lm.gemm=onednn) vs torch's BLAS (blas), same pairs and {len(prompts)} prompts:")
    print(f"  scoring blas {t_score:.2f}s, onednn {ours_scoring['shared_s']:.2f}s: {t_score / ours_scoring['shared_s']:.2f}x;"
          f" batched generation blas {t_gen:.2f}s, onednn {ours_batched['seconds']:.2f}s: {t_gen / ours_batched['seconds']:.2f}x")
    print(f"  largest likelihood difference {blas['bpb_diff']:.2e} bits per byte; identical answers {blas['same']}")
    return {"onednn_vs_blas_scoring": t_score / ours_scoring["shared_s"], "onednn_vs_blas_generation": t_gen / ours_batched["seconds"],
            "onednn_max_abs_bpb_diff": blas["bpb_diff"], "onednn_identical_answers": blas["same"]}


def weight_bytes(model: LocalModel) -> int:
    """The bytes of the model's weights: its parameters and the oneDNN layers' packed weights
    (kept outside the parameters)."""
    from ads_cli.engine.linear import _packed_linear_class

    packed = sum(m.weight_bytes for m in model.model.modules() if isinstance(m, _packed_linear_class()))
    return packed + sum(p.numel() * p.element_size() for p in model.model.parameters())


def dtype_comparison(params_path: str, overrides: list[str], dtype: str, pairs, prompts, new_tokens: int, fp32_scoring: dict,
                     fp32_batched: dict) -> dict:
    """lm.dtype=`dtype` (int8 or bf16) against fp32 on the same pairs and prompts: scoring and
    batched generation speed, the largest likelihood difference in bits per byte, and identical
    answers."""
    other = other_engine(params_path, overrides, f"lm.dtype={dtype}", pairs, prompts, new_tokens, fp32_scoring, fp32_batched)
    t_score, t_gen = other["score_s"], other["generate_s"]
    what = {"int8": "dynamic quantization of the linear layers", "bf16": "the decoder's linear layers in bfloat16"}[dtype]
    print(f"\n{dtype} ({what}) vs fp32, same pairs and prompts:")
    print(f"  scoring {fp32_scoring['shared_s']:.2f}s -> {t_score:.2f}s: {fp32_scoring['shared_s'] / t_score:.2f}x;"
          f" batched generation {fp32_batched['seconds']:.2f}s -> {t_gen:.2f}s: {fp32_batched['seconds'] / t_gen:.2f}x")
    print(f"  largest likelihood difference {other['bpb_diff']:.4f} bits per byte; identical answers {other['same']}")
    return {f"{dtype}_vs_fp32": fp32_scoring["shared_s"] / t_score, f"{dtype}_generation_vs_fp32": fp32_batched["seconds"] / t_gen,
            f"{dtype}_max_abs_bpb_diff": other["bpb_diff"], f"{dtype}_identical_answers": other["same"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scoring-only", action="store_true", help="Only the likelihood-scoring comparison (a minute).")
    ap.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                    help="Compare lm.dtype=int8 with fp32 (loads a second model; on by default: a run on fp32 writes"
                         " int8_vs_fp32 and int8_max_abs_bpb_diff to the JSON).")
    ap.add_argument("--bf16", action="store_true", help="Also compare lm.dtype=bf16 with fp32 (loads a second model).")
    add_set_option(ap, " The comparisons with fp32 and BLAS run only when lm.dtype is fp32.")
    ap.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    args = ap.parse_args()

    overrides = ["lm.cache=false", "lm.policy_backend=local", *args.set]  # measure the engine, not the cache
    params = params_mod.load(args.params, overrides)
    model = load_role(params, "policy")
    docs = read_jsonl(Path("data/prepared/docs.jsonl"))
    pairs = scoring_pairs(model, docs, args.seed)
    figures: dict = {}
    if args.scoring_only:
        figures["scoring_shared_vs_separate"] = scoring(model, pairs)["ratio"]
        write_figures(args.json, figures)
        return
    prompts = make_prompts(model, docs, args.prompts, args.seed)
    n_prompt = sum(model.count_tokens(model.render(p)) for p in prompts)
    dtype = params["lm"]["dtype"]
    print(f"model {params['lm']['policy']}, {dtype}, {torch.get_num_threads()} threads, batch size {model.batch_size}")
    print(f"{len(prompts)} prompts, {n_prompt} prompt tokens (mean {n_prompt / len(prompts):.0f}), {args.new_tokens} new tokens each, greedy")

    model.cache = CallCache(None)
    naive, t_naive = timed(lambda: [model.generate([p], max_new_tokens=args.new_tokens)[0] for p in prompts])
    with tempfile.TemporaryDirectory() as tmp:
        model.cache = CallCache(Path(tmp) / "calls.sqlite")
        batched, t_batched = timed(lambda: model.generate(prompts, max_new_tokens=args.new_tokens))
        warm, t_warm = timed(lambda: model.generate(prompts, max_new_tokens=args.new_tokens))
        assert all(g.cached for g in warm)
    same = sum(a.text == b.text for a, b in zip(naive, batched))
    gen = sum(g.completion_tokens for g in batched)
    gen_naive = sum(g.completion_tokens for g in naive)
    print(f"\n{'':22}{'time (s)':>10}{'gen tok/s':>11}{'all tok/s':>11}{'speed-up':>10}")
    for name, secs, g in (("naive (batch 1)", t_naive, gen_naive), (f"batched ({model.batch_size})", t_batched, gen), ("batched, cache warm", t_warm, gen)):
        print(f"{name:22}{secs:10.3f}{g / secs:11.1f}{(g + n_prompt) / secs:11.1f}{t_naive / secs:9.1f}x")
    print(f"identical texts naive vs batched: {same}/{len(prompts)}")
    figures["batched_vs_naive"] = t_naive / t_batched

    # shared prefix: 5 questions after one 800-token context
    context, i = "", 0
    while model.count_tokens(context) < 800:
        context += docs[i]["text"] + "\n"
        i += 1
    context = model.tok.decode(model.tok(context, add_special_tokens=False).input_ids[:800])
    questions = ["Who is mentioned first?", "What is the main topic?", "Name one date mentioned.", "Summarise it in five words.", "What country is mentioned?"]
    ctx_prompts = [f"{context}\nQuestion: {q}\nAnswer:" for q in questions]
    model.cache = CallCache(None)
    shared, t_shared = timed(lambda: model.generate(ctx_prompts, max_new_tokens=16, chat=False))
    with engine_setting("MIN_SHARED_PREFIX", 10**9):
        plain, t_plain = timed(lambda: model.generate(ctx_prompts, max_new_tokens=16, chat=False))
    print("\nshared 800-token context, 5 questions, 16 new tokens, one batch:")
    print(f"  recompute prefix {t_plain:.2f}s, reuse prefix KV {t_shared:.2f}s: {t_plain / t_shared:.1f}x;"
          f" identical answers {sum(a.text == b.text for a, b in zip(shared, plain))}/5")
    figures["prefix_reuse"] = t_plain / t_shared

    figures |= in_place_kv(model, prompts[:16], args.new_tokens)
    figures |= row_prefill(model, prompts[:16], args.new_tokens)
    figures |= packed_prefill(model, pairs, 32)
    figures |= constrained_cost(params, model, read_jsonl(Path("data/prepared/tasks_train.jsonl")))
    fp32_scoring = scoring(model, pairs)
    figures["scoring_shared_vs_separate"] = fp32_scoring["ratio"]
    figures |= grouped_attention(model, pairs)
    figures |= kept_prefix(model, pairs, 32)
    figures["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # the engine alone

    n_bytes = weight_bytes(model)
    if dtype == "fp32":
        fp32_batched = {"gens": batched[:16], "seconds": timed(lambda: fp32_generate(model, prompts[:16], args.new_tokens))[1]}
    # the engines compared below load one at a time, each dropped after its run; this one goes first
    del model
    weights.unload_all()
    bw = bandwidth_gb_s()
    print(f"\npeak RSS of the {dtype} engine {figures['peak_rss_gib'] * 1024:.0f} MiB")
    print(f"weights {n_bytes / 1e6:.0f} MB ({dtype}), copy bandwidth {bw:.1f} GB/s ->"
          f" batch-1 decode bound {bw * 1e9 / n_bytes:.1f} tok/s; measured naive {gen_naive / t_naive:.1f} gen tok/s (incl. prefill)")
    if dtype == "fp32":
        if params["lm"]["gemm"] == "onednn":
            figures |= gemm_comparison(args.params, overrides, pairs, prompts[:16], args.new_tokens, fp32_scoring, fp32_batched)
        for other in ("int8", "bf16"):
            if getattr(args, other):
                figures |= dtype_comparison(args.params, overrides, other, pairs, prompts[:16], args.new_tokens, fp32_scoring, fp32_batched)
    figures["process_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak RSS of the whole run (each engine loaded in turn, the bandwidth probe's 512 MiB of buffers)"
          f" {figures['process_peak_rss_gib'] * 1024:.0f} MiB")
    write_figures(args.json, figures | {"settings": args.set} if args.set else figures)


def fp32_generate(model, prompts, new_tokens):
    model.cache = CallCache(None)
    return model.generate(prompts, max_new_tokens=new_tokens)


def write_figures(path: Path | None, figures: dict) -> None:
    if path is None:
        return
    rounded = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in figures.items()}  # 4 significant digits
    path.write_text(json.dumps(rounded, indent=2) + "\n")
    print(f"figures -> {path}")


if __name__ == "__main__":
    main()

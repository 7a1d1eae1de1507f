"""The server backend vs the local engine, on the same prompts in the same run.

    pip install -e '.[server]' && ads prepare && python benchmarks/bench_backend.py [--prompts 32] [--new-tokens 32]
        [--set lm.dtype=bf16]

Starts llama-cpp-python's OpenAI-compatible server on 127.0.0.1 with the packaged SmolLM2
GGUF (all cores), sends the prompts through `engine.openai.OpenAIModel` at concurrency 1, 2, 4
and 8, then runs the local transformers engine on the same prompts, batched and one at a time. Greedy, no
call cache. Prints generated tokens/s, the ratio to the local engine and to concurrency 1,
and how many answers match the local engine's text.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_lm import add_set_option, make_prompts

from ads_cli.engine.roles import load_role
from ads_cli.stages import serve
from ads_cli import params as params_mod
from ads_cli.cache import CallCache
from ads_cli.jsonl import read_jsonl
from ads_cli.paths import Paths
from ads_cli.engine.openai import OpenAIModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base-url", help="benchmark a server that is already running (e.g. llama.cpp's llama-server"
                                       " --parallel 8) instead of starting llama-cpp-python's")
    ap.add_argument("--model", help="the served model's name (default: openai_policy.model)")
    ap.add_argument("--extra-body", default='{"repeat_penalty": 1.0}',
                    help="JSON merged into each request; for llama-server add \"cache_prompt\": false, or the"
                         " later rows reuse the KV cache of the earlier rows' identical prompts")
    ap.add_argument("--json", type=Path, help="Also write the ratios to this JSON file: local_vs_server_c1, and with"
                                              " --base-url local_vs_llama_server (against the server's best concurrency)")
    add_set_option(ap)
    args = ap.parse_args()

    params = params_mod.load(args.params, ["lm.cache=false", "lm.policy_backend=local", *args.set])  # the engine, not the cache
    local = load_role(params, "policy")
    prompts = make_prompts(local, read_jsonl(Path("data/prepared/docs.jsonl")), args.prompts, args.seed)
    n_prompt = sum(local.count_tokens(local.render(p)) for p in prompts)
    print(f"{len(prompts)} chat prompts, {n_prompt} prompt tokens (mean {n_prompt / len(prompts):.0f}),"
          f" {args.new_tokens} new tokens each, greedy, no call cache; {torch.get_num_threads()} threads, local {params['lm']['dtype']}")

    rows = []
    model = args.model or params["openai_policy"]["model"]
    if args.base_url:
        process, base_url = None, args.base_url
    else:
        process, base_url = serve.start(serve.gguf_path(params, "policy", Paths.here()), model)
    try:
        for c in (int(x) for x in args.concurrency.split(",")):
            settings = dict(params["openai_policy"], base_url=base_url, model=model, concurrency=c, timeout=600.0,
                            extra_body=json.loads(args.extra_body))
            remote = OpenAIModel(settings, "openai_policy", CallCache(None), local.tok)
            t = time.perf_counter()
            gens = remote.generate(prompts, max_new_tokens=args.new_tokens, desc=f"server, concurrency {c}")
            rows.append((f"server, concurrency {c}", time.perf_counter() - t, gens))
            failed = sum(g.error is not None for g in gens)
            if failed:
                print(f"  concurrency {c}: {failed} requests failed")
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)

    t = time.perf_counter()
    local_gens = local.generate(prompts, max_new_tokens=args.new_tokens, desc="local engine")
    t_local = time.perf_counter() - t
    local_tps = sum(g.completion_tokens for g in local_gens) / t_local
    t = time.perf_counter()
    one_by_one = [local.generate([p], max_new_tokens=args.new_tokens)[0] for p in prompts]
    rows.insert(0, ("local, one at a time", time.perf_counter() - t, one_by_one))

    print(f"\n{'backend':<24} {'seconds':>8} {'gen tok/s':>10} {'req/s':>6} {'vs local':>9} {'vs c=1':>7} {'same text':>10}")
    print(f"{'local engine (batched)':<24} {t_local:8.1f} {local_tps:10.1f} {len(prompts) / t_local:6.2f} {1.0:8.2f}x {'':>7} {'':>10}")
    base, server_tps = None, []
    for name, seconds, gens in rows:
        tps = sum(g.completion_tokens for g in gens) / seconds
        if name.startswith("server"):
            base = base or tps
            server_tps.append(tps)
        same = sum(g.text == l.text for g, l in zip(gens, local_gens))
        vs_c1 = f"{tps / base:6.2f}x" if base else ""
        print(f"{name:<24} {seconds:8.1f} {tps:10.1f} {len(prompts) / seconds:6.2f} {tps / local_tps:8.2f}x {vs_c1:>7}"
              f" {same:>4}/{len(prompts)}")
    if args.json:
        figures = {"local_vs_server_c1": round(local_tps / server_tps[0], 4)}
        if args.base_url:
            figures["local_vs_llama_server"] = round(local_tps / max(server_tps), 4)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures -> {args.json}")


if __name__ == "__main__":
    main()

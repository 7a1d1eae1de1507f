"""The engine's bounds on memory, each off and on in the same run, each side in a fresh process:

    ads prepare && python benchmarks/bench_memory.py [--params params.yaml] [--kinds batch,heap,rows] [--json PATH]

1. `batch`: 16 long prompts (700 to 1,000 tokens, like the optimizer's prompts after iteration 1,
   which carry their own task's block), 40 new tokens each, in one `generate` call: all 16 rows in
   one batch (`lm.batch_tokens=0`, the way before the token budget) against the default budget.
   The peak RSS is read before the call (the model's loading peak) and after it.
2. `heap`: 30 calls, each scoring 8 references and answering 8 questions after a context of
   random length (as training scores a trajectory): without handing the heap's free pages back
   after a batch (`TRIM_ABOVE = 0`) and with the default. The RSS after the calls and the peak.
3. `rows`: `bench_lm`'s 64 prompts (150-400 tokens) × 64 new tokens, greedy, in one `generate`
   call: all 64 rows decoded as one batch (`lm.batch_size=64`, `lm.batch_tokens=0`) against the
   defaults (16 rows, and the token budget). Fuller decoding batches are faster and cost memory.

Numbers computed do not change with any of these settings but for the last bits where a batch's
rows differ (oneDNN); the call cache is off. Prints each side and the ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from ads_cli import params as params_mod
from ads_cli.cache import CallCache
from ads_cli.engine import weights
from ads_cli.engine.roles import load_role
from ads_cli.jsonl import read_jsonl
from ads_cli.method.policy import example_messages


def rss_mib() -> float:
    return weights.rss_bytes() / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def long_prompts(model, docs: list[str], n: int, rng: random.Random) -> list[str]:
    prompts = []
    while len(prompts) < n:
        target, words = rng.randint(700, 1000), []
        while model.count_tokens(" ".join(words)) < target:
            words += rng.choice(docs).split()
        prompts.append("Task: summarize.\n" + " ".join(words[: int(len(words) * target / model.count_tokens(' '.join(words)))]) + "\nCalls:")
    return prompts


def child(kind: str, setting: int, params_path: str) -> dict:
    """One side, in this process: what it measured."""
    overrides = ["lm.cache=false", "lm.policy_backend=local"]
    if kind == "batch":
        overrides.append(f"lm.batch_tokens={setting}")
    elif kind == "rows":
        overrides += [f"lm.batch_size={setting}", "lm.batch_tokens=0"] if setting else []  # 0: the defaults
    else:
        weights.TRIM_ABOVE = setting
    params = params_mod.load(params_path, overrides)
    model = load_role(params, "policy")
    model.cache = CallCache(None)
    records = read_jsonl(Path("data/prepared/docs.jsonl"))
    docs = [d["text"] for d in records]
    rng = random.Random(0)
    loaded, start = peak_mib(), time.perf_counter()
    if kind == "batch":
        prompts = long_prompts(model, docs, 16, rng)
        start = time.perf_counter()
        model.generate(prompts, max_new_tokens=40, temperature=0.8, seed=0, chat=False)
    elif kind == "rows":
        from bench_lm import make_prompts  # this folder is on the path of a script run from it

        prompts = make_prompts(model, records, 64, 0)
        start = time.perf_counter()
        model.generate(prompts, max_new_tokens=64)
    else:
        for _ in range(30):
            context = " ".join(rng.choice(docs) for _ in range(rng.randint(1, 6)))[: rng.randint(300, 3000)]
            questions = [" ".join(rng.choice(docs).split()[: rng.randint(10, 80)]) + "?" for _ in range(8)]
            rendered = [model.render(example_messages(q, context)) for q in questions]
            model.loglikelihood([(r, " ".join(rng.choice(docs).split()[: rng.randint(1, 6)])) for r in rendered])
            model.generate(rendered, max_new_tokens=32, chat=False)
    return {"seconds": round(time.perf_counter() - start, 1), "loading_peak_mib": round(loaded), "peak_mib": round(peak_mib()),
            "rss_after_mib": round(rss_mib())}


def side(kind: str, setting: int, params_path: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(setting), "--params", params_path],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--kinds", default="batch,heap,rows", help="which comparisons to run, comma-separated (default: all three)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.params)))
        return
    kinds = args.kinds.split(",")
    unknown = set(kinds) - {"batch", "heap", "rows"}
    if unknown:
        ap.error(f"--kinds: unknown {', '.join(repr(k) for k in sorted(unknown))}; expected a comma-separated list of batch, heap, rows")
    lm = params_mod.load(args.params, [])["lm"]
    budget = lm["batch_tokens"]
    figures = {}
    for kind, (off, on), what in (("batch", (0, budget), f"16 prompts of 700-1,000 tokens: one 16-row batch vs batch_tokens={budget}"),
                                  ("heap", (0, weights.TRIM_ABOVE), f"30 scoring and answering calls: no trim vs trim above {weights.TRIM_ABOVE >> 20} MiB"),
                                  ("rows", (64, 0), f"64 prompts x 64 new tokens: one 64-row batch vs {lm['batch_size']} rows"
                                                    f" and batch_tokens={budget}")):
        if kind not in kinds:
            continue
        a, b = side(kind, off, args.params), side(kind, on, args.params)
        figures[kind] = {"off": a, "on": b, "time_ratio": round(a["seconds"] / b["seconds"], 3),
                         "peak_saved_mib": a["peak_mib"] - b["peak_mib"], "rss_after_saved_mib": a["rss_after_mib"] - b["rss_after_mib"]}
        print(f"{kind}: {what}")
        for name, r in (("off", a), ("on", b)):
            print(f"  {name:>3}: {r['seconds']:6.1f} s, peak {r['peak_mib']} MiB (loading peak {r['loading_peak_mib']}),"
                  f" RSS after {r['rss_after_mib']} MiB")
        print(f"  off/on time {figures[kind]['time_ratio']:.2f}x; peak {figures[kind]['peak_saved_mib']:+d} MiB saved,"
              f" RSS after {figures[kind]['rss_after_saved_mib']:+d} MiB saved", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Would `demonstrate` help more if it wrote examples in the task's own format?

    ads prepare && python benchmarks/measure_demonstrate.py [--params params.yaml] [--json PATH]

A measurement of the method, not of speed (about 10 min on 2 cores, cold). For every train and
test task of `data/prepared/`, the policy writes `apis.demonstrate_n` question-answer pairs three
ways, and the held-out references' likelihood (bits per byte, the likelihood lens) is scored with
those pairs as the collected data, against no data, on the policy's default prompt:

- `generic`: `demonstrate`'s own prompt (`ads_cli.apis.Demonstrate`), on the task's first
  observed question, as the `demonstrate_only` baseline calls it;
- `in_format`: the task's observed examples (inputs and references, never the held-out ones)
  shown as the format to follow, on the same topic;
- `in_format_name`: the same, on the task's name.

It prints, per variant, the mean difference against no data with a bootstrap 95 % CI over tasks,
and the tasks better / tied / worse (a tie within `evaluate.tie_epsilon_likelihood`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ads_cli import params as params_mod
from ads_cli.apis import APIContext, Demonstrate, parse_pairs
from ads_cli.engine.roles import load_role
from ads_cli.method.policy import build_context, likelihood_scores
from ads_cli.method.stats import mean, paired_summary
from ads_cli.method.tasks import last_message, load_tasks, references


def in_format_prompt(task: dict, topic: str, n: int) -> str:
    shown = "\n\n".join(f"Q: {last_message(e['input'])}\nA: {references(e['reference'])[0]}" for e in task["observed"])
    return (f"Here are examples of a task:\n\n{shown}\n\nWrite {n} new examples of this task about {topic}, "
            f"in exactly the same format:\nQ: <question>\nA: <answer>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--json", type=Path, help="Also write the per-variant summaries to this JSON file.")
    args = ap.parse_args()

    params = params_mod.load(args.params, [])
    policy = load_role(params, "policy")
    demonstrate = Demonstrate(APIContext(params, lambda: None, lambda: policy))
    test = load_tasks(Path("data/prepared/tasks_test.jsonl"))
    tasks = test + load_tasks(Path("data/prepared/tasks_train.jsonl"))
    n, fewshot, budget = demonstrate.n, params["train"]["fewshot"], params["train"]["context_tokens"]
    epsilon = params["evaluate"]["tie_epsilon_likelihood"]
    topics = [last_message(t["observed"][0]["input"]) for t in tasks]
    variants = {
        "generic": [demonstrate.prompt(topic) for topic in topics],
        "in_format": [in_format_prompt(t, topic, n) for t, topic in zip(tasks, topics)],
        "in_format_name": [in_format_prompt(t, t["name"], n) for t in tasks],
    }
    no_data = [mean(likelihood_scores(policy, t, "", fewshot=fewshot)) for t in tasks]
    figures = {}
    print(f"{len(tasks)} tasks ({len(test)} test), {n} pairs per call; likelihood (bits per byte) with the pairs - without")
    print(f"{'variant':16}{'tasks':>7}{'mean diff':>11}  95% CI              better/tie/worse  tasks with pairs")
    for name, prompts in variants.items():
        gens = policy.generate(prompts, max_new_tokens=demonstrate.max_tokens, desc=name)
        scores, parsed = [], 0
        for task, base, g in zip(tasks, no_data, gens):
            pairs, _ = parse_pairs(g.text)
            items = [{"kind": "demonstration", "instruction": q, "response": a} for q, a in pairs[:n]]
            context = build_context(task, items, budget, policy.count_tokens)
            parsed += bool(context)
            scores.append(mean(likelihood_scores(policy, task, context, fewshot=fewshot)) if context else base)
        figures[name] = {}
        for part, idx in (("all", range(len(tasks))), ("test", range(len(test))), ("train", range(len(test), len(tasks)))):
            s = paired_summary([scores[i] for i in idx], [no_data[i] for i in idx], epsilon)
            figures[name][part] = s
            counts = "/".join(str(round(s[k] * s["n"])) for k in ("win_rate", "tie_rate", "loss_rate"))
            print(f"{name if part == 'all' else '':16}{part:>7}{s['mean_diff']:+11.3f}  [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]"
                  f"{counts:>20}  {parsed if part == 'all' else ''}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures -> {args.json}")


if __name__ == "__main__":
    main()

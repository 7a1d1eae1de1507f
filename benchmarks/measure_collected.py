"""What collected data does to the held-out likelihood, on the policy's default prompt.

    ads prepare && ads index && python benchmarks/measure_collected.py [--params params.yaml] [--json PATH]

A measurement of the method, not of speed (tens of minutes cold on 2 cores; seconds with the call
cache warm). For every train and test task of `data/prepared/`, data is collected several fixed
ways, and the held-out references' likelihood (bits per byte, the likelihood lens) is scored with it as the collected
data (`build_context`, `train.context_tokens`), against no data:

- `demonstrate`: `demonstrate`'s own prompt (`ads_cli.apis.Demonstrate`), on the task's first
  observed question, as the `demonstrate_only` baseline calls it;
- `demonstrate_in_format`: the task's observed examples (inputs and references, never the
  held-out ones) shown as the format to follow, on the same topic;
- `demonstrate_in_format_name`: the same, on the task's name;
- `retrieve_name`, `retrieve_question`, `retrieve_questions`: `retrieve` on the task's name, on
  its first observed question, on each of its observed questions. These are the spans an
  optimizer whose arguments were constrained to the task's text could write.

It prints, per way, the mean difference against no data with a bootstrap 95 % CI over tasks,
and the tasks better / tied / worse (a tie within `evaluate.tie_epsilon_likelihood`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ads_cli import params as params_mod
from ads_cli.apis import APIContext, Demonstrate, Retrieve, parse_pairs
from ads_cli.engine.roles import load_role
from ads_cli.method.policy import build_context, likelihood_scores
from ads_cli.method.search import Searcher
from ads_cli.method.stats import mean, paired_summary
from ads_cli.method.tasks import last_message, load_tasks, references
from ads_cli.paths import Paths


def in_format_prompt(task: dict, topic: str, n: int) -> str:
    shown = "\n\n".join(f"Q: {last_message(e['input'])}\nA: {references(e['reference'])[0]}" for e in task["observed"])
    return (f"Here are examples of a task:\n\n{shown}\n\nWrite {n} new examples of this task about {topic}, "
            f"in exactly the same format:\nQ: <question>\nA: <answer>")


def demonstrations(policy, demonstrate: Demonstrate, prompts: list[str], desc: str) -> list[list[dict]]:
    """Per prompt, the pairs the policy writes, as `demonstrate` items."""
    gens = policy.generate(prompts, max_new_tokens=demonstrate.max_tokens, desc=desc)
    return [[{"kind": "demonstration", "instruction": q, "response": a} for q, a in parse_pairs(g.text)[0][:demonstrate.n]]
            for g in gens]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--json", type=Path, help="Also write the per-way summaries to this JSON file.")
    args = ap.parse_args()

    params = params_mod.load(args.params, [])
    policy = load_role(params, "policy")
    ctx = APIContext(params, lambda: Searcher(Paths.here().index), lambda: policy)
    demonstrate, retrieve = Demonstrate(ctx), Retrieve(ctx)
    test = load_tasks(Path("data/prepared/tasks_test.jsonl"))
    tasks = test + load_tasks(Path("data/prepared/tasks_train.jsonl"))
    n, fewshot, budget = demonstrate.n, params["train"]["fewshot"], params["train"]["context_tokens"]
    epsilon = params["evaluate"]["tie_epsilon_likelihood"]
    questions = [[last_message(e["input"]) for e in t["observed"]] for t in tasks]
    ways = {
        "demonstrate": lambda: demonstrations(policy, demonstrate, [demonstrate.prompt(q[0]) for q in questions], "demonstrate"),
        "demonstrate_in_format": lambda: demonstrations(policy, demonstrate, [in_format_prompt(t, q[0], n) for t, q in zip(tasks, questions)],
                                                        "demonstrate_in_format"),
        "demonstrate_in_format_name": lambda: demonstrations(policy, demonstrate, [in_format_prompt(t, t["name"], n) for t in tasks],
                                                             "demonstrate_in_format_name"),
        "retrieve_name": lambda: [retrieve(t["name"]).items for t in tasks],
        "retrieve_question": lambda: [retrieve(q[0]).items for q in questions],
        "retrieve_questions": lambda: [[i for x in q for i in retrieve(x).items] for q in questions],
    }
    no_data = [mean(likelihood_scores(policy, t, "", fewshot=fewshot)) for t in tasks]
    figures = {}
    print(f"{len(tasks)} tasks ({len(test)} test); likelihood (bits per byte) with the collected data - without")
    print(f"{'way':28}{'tasks':>7}{'mean diff':>11}  95% CI              better/tie/worse  tasks with data")
    for name, collect in ways.items():
        scores, with_data = [], 0
        for task, base, items in zip(tasks, no_data, collect()):
            context = build_context(task, items, budget, policy.count_tokens)
            with_data += bool(context)
            scores.append(mean(likelihood_scores(policy, task, context, fewshot=fewshot)) if context else base)
        figures[name] = {}
        for part, idx in (("all", range(len(tasks))), ("test", range(len(test))), ("train", range(len(test), len(tasks)))):
            s = paired_summary([scores[i] for i in idx], [no_data[i] for i in idx], epsilon)
            figures[name][part] = s
            counts = "/".join(str(round(s[k] * s["n"])) for k in ("win_rate", "tie_rate", "loss_rate"))
            print(f"{name if part == 'all' else '':28}{part:>7}{s['mean_diff']:+11.3f}  [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]"
                  f"{counts:>20}  {with_data if part == 'all' else ''}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures -> {args.json}")


if __name__ == "__main__":
    main()

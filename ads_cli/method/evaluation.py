"""Reading an evaluation: per-method summaries in each lens, paired statistics, and the report.

Every comparison is paired by task: win/tie/loss (a tie within `epsilon`), the mean of ADS −
method with a bootstrap 95% CI over tasks, and a per-category table. The two lenses, side by
side: `metric` (the task's metric, what users care about) and `likelihood` (log2 p of the
references per byte, dense: it sees effects the metric of a small policy cannot).
"""

from __future__ import annotations

import collections

from ..charts import REFERENCE, TRAIN_CHARTS, markdown
from .stats import bootstrap_ci, mean, paired_summary

# what each lens reads from a method's per-task record
LENS_FIELD = {"metric": "score", "likelihood": "likelihood"}
# baselines: what ADS is compared with; the reference point uses held-out inputs, so it is
# reported but is not a baseline to beat
METHODS = ["ads", "ads_unchecked", "no_data", "zero_shot", "fewshot", "random", "random_docs", "retrieve_only", "demonstrate_only",
           "answer_only", "iter0"]
UNITS = {"metric": "the task's metric, 0 to 1", "likelihood": "log2 p(reference) per UTF-8 byte, higher is better"}


def summarize(task_results: list[dict], lens: str, epsilon: float, seed: int) -> dict:
    """The per-method means and ADS's paired comparisons with every other method, in one lens."""
    field = LENS_FIELD[lens]
    # the reference point is there when `evaluate.reference` scored it
    methods = METHODS + ([REFERENCE] if task_results and REFERENCE in task_results[0]["methods"] else [])
    per_method = {m: {"score": round(mean([t["methods"][m][field] for t in task_results]), 6),
                      "ci95": list(bootstrap_ci([t["methods"][m][field] for t in task_results], seed)),
                      "cost": round(mean([t["methods"][m]["cost"] for t in task_results]), 3)} for m in methods}
    ads_scores = [t["methods"]["ads"][field] for t in task_results]
    vs = {m: paired_summary(ads_scores, [t["methods"][m][field] for t in task_results], epsilon, seed) for m in methods if m != "ads"}
    rows_by_category = collections.defaultdict(list)
    for t in task_results:
        rows_by_category[t["category"]].append(t)
    by_category = {cat: {"tasks": len(rows)} | {m: round(mean([t["methods"][m][field] for t in rows]), 4) for m in methods}
                   for cat, rows in sorted(rows_by_category.items())}
    # the most that choosing among the methods per task could give: each task's best method
    # picked on the held-out scores themselves, with hindsight (an upper bound, not a method);
    # the bare prompt and the reference point (it reads held-out inputs) are not choices
    best = [max(t["methods"][m][field] for m in METHODS if m != "zero_shot") for t in task_results]
    headroom = paired_summary(best, [t["methods"]["no_data"][field] for t in task_results], epsilon, seed)
    return {
        "win_rate": vs["no_data"]["win_rate"], "tie_rate": vs["no_data"]["tie_rate"], "loss_rate": vs["no_data"]["loss_rate"],
        "avg_score": per_method["ads"]["score"], "avg_baseline_score": per_method["no_data"]["score"],
        "avg_cost": per_method["ads"]["cost"], "mean_diff_vs_no_data": vs["no_data"]["mean_diff"],
        "ci95_vs_no_data": vs["no_data"]["ci95"], "parse_failures": sum(bool(t["parse_error"]) for t in task_results),
        "methods": per_method, "vs": vs, "by_category": by_category, "hindsight_best_vs_no_data": headroom,
    }


def _method_table(summary: dict, digits: int) -> list[str]:
    lines = ["| method | mean score | mean cost | ADS win / tie / loss | ADS − method (95% CI) |", "|---|---|---|---|---|"]
    for m, v in summary["methods"].items():
        label = f"{m} (reference, uses held-out questions)" if m == REFERENCE else m
        if m == "ads":
            lines.append(f"| **{label}** | {v['score']:.{digits}f} | {v['cost']:.0f} | | |")
            continue
        c = summary["vs"][m]
        lines.append(f"| {label} | {v['score']:.{digits}f} | {v['cost']:.0f} | {c['win_rate']:.0%} / {c['tie_rate']:.0%} / {c['loss_rate']:.0%}"
                     f" | {c['mean_diff']:+.{digits}f} [{c['ci95'][0]:+.{digits}f}, {c['ci95'][1]:+.{digits}f}] |")
    return lines


def report(evaluation: dict, charts: list[str] = ()) -> str:
    """report.md: the tables of both lenses, with the charts `charts` (file names under
    results/plots/) embedded beside them."""
    lenses = evaluation["lenses"]
    lines = [
        "# ADS evaluation", "",
        f"{evaluation['completed_tasks']} of {evaluation['total_tasks']} test tasks completed ({evaluation['failed_tasks']} failed);"
        f" optimizer after iteration {evaluation['final_iteration']}. Scores are means over held-out examples, then over tasks;"
        f" cost is the data-collection cost per task ({evaluation['cost_unit']}). The policy's prompt: {evaluation['layout']}.", "",
    ]
    for lens, summary in lenses.items():
        lines += [f"## {lens.capitalize()} lens ({UNITS[lens]})", ""] + _method_table(summary, 3) + [""]
        h = summary["hindsight_best_vs_no_data"]
        aside = "zero_shot and the reference point aside" if REFERENCE in summary["methods"] else "zero_shot aside"
        lines += [f"Headroom: each task's best method above ({aside}), picked with hindsight on these held-out scores,"
                  f" is {h['mean_diff']:+.3f} [{h['ci95'][0]:+.3f}, {h['ci95'][1]:+.3f}] above no_data (better on"
                  f" {h['win_rate']:.0%} of tasks): the most that choosing among these methods per task could give,"
                  f" an upper bound, not a method.", ""]
    lines += markdown([c for c in ["scores.png"] if c in charts])
    s = lenses["metric"]
    lines += ["## By category (metric lens)", "", "| category | tasks | " + " | ".join(s["methods"]) + " |",
              "|---|---|" + "---|" * len(s["methods"])]
    for cat, row in s["by_category"].items():
        lines.append(f"| {cat} | {row['tasks']} | " + " | ".join(f"{row[m]:.3f}" for m in s["methods"]) + " |")
    lines += [""] + markdown([c for c in ["by_category.png"] if c in charts])
    if any(c in charts for c in TRAIN_CHARTS):
        lines += ["## Training", ""] + markdown([c for c in TRAIN_CHARTS if c in charts])
    lines += ["## ADS trajectories", "",
              "| task | metric | calls | no data (metric) | ADS (metric) | no data (likelihood) | ADS (likelihood) |",
              "|---|---|---|---|---|---|---|"]
    for t in evaluation["task_results"]:
        calls = "; ".join(f"{c['api']}: {c['arg'][:40]}" for c in t["trajectory"]) or ("parse error" if t["parse_error"] else "none")
        m = t["methods"]
        check = m["ads"].get("check")
        if check and check["chosen"]:
            chosen = check["candidates"][check["chosen"]]
            calls += f" (candidate {check['chosen'] + 1} of {len(check['candidates'])}: {chosen['trajectory_id'].rsplit('#', 1)[-1]})"
        elif check and not check["kept"] and (collected := sum(1 for c in check["candidates"] if c["calls"])):
            calls += f" (the data of {collected} of {len(check['candidates'])} candidates, dropped: no gain on the observed examples)"
        likelihood = [f"{m[x]['likelihood']:.3f}" if "likelihood" in m[x] else "—" for x in ("no_data", "ads")]
        lines.append(f"| {t['task']} | {t['metric']} | {calls.replace('|', '/')} | {m['no_data']['score']:.3f} | {m['ads']['score']:.3f}"
                     f" | {likelihood[0]} | {likelihood[1]} |")
    return "\n".join(lines) + "\n"

"""`ads inspect TASK_ID`: one train task's iteration, for debugging and for trust.

What the optimizer read (its prompt), what each trajectory called and collected, the gain and
cost in each lens, the reward and whether it was kept, and the policy's answers to two held-out
examples without and with the kept data. It reads the artifacts of `ads train`; the policy's
answers come from the call cache when train computed them (which it did for the kept data),
else the policy computes them.
"""

from __future__ import annotations

import difflib
import re

from ..engine.roles import load_role
from ..errors import AdsError
from ..jsonl import read_json, read_jsonl
from ..method.policy import build_context, item_text, score_after_lora, score_with_context
from ..method.tasks import clip, last_message, load_tasks
from ..paths import Paths

SHOWN_EXAMPLES = 2
ITEM_CHARS = 120


def iterations_done(paths: Paths) -> list[int]:
    """The iterations whose update finished (their rewards are written), in order."""
    found = [int(m[1]) for p in paths.data.glob("iter_*") if (m := re.fullmatch(r"iter_(\d+)", p.name))]
    return sorted(k for k in found if paths.rewards(k).exists())


def find_task(tasks: list[dict], task_id: str, where: str) -> dict:
    by_id = {t["id"]: t for t in tasks}
    if task_id in by_id:
        return by_id[task_id]
    close = difflib.get_close_matches(task_id, list(by_id), n=3, cutoff=0.3)
    hint = f"; closest: {', '.join(close)}" if close else f"; it has {len(by_id)} tasks, e.g. {', '.join(sorted(by_id)[:3])}"
    raise AdsError(f"task {task_id!r} is not in {where}{hint}")


def gather(params: dict, paths: Paths, task_id: str, iteration: int | None = None, answers: bool = True) -> dict:
    """Everything `ads inspect` shows, as one JSON-ready dict."""
    done = iterations_done(paths)
    if not done:
        raise AdsError("no finished training iteration in data/: run `ads train` first")
    k = done[-1] if iteration is None else iteration
    if k not in done:
        raise AdsError(f"--iter {k}: no finished iteration {k} in data/; there are: {', '.join(map(str, done))}")
    task = find_task(load_tasks(paths.tasks_train), task_id, paths.relative(paths.tasks_train))
    mine = lambda rows: [r for r in rows if r["task_id"] == task["id"]]  # noqa: E731
    trajectories = mine(read_jsonl(paths.trajectories(k)))
    executions = {r["trajectory_id"]: r for r in mine(read_jsonl(paths.executions(k)))}
    rewards = {r["trajectory_id"]: r for r in mine(read_jsonl(paths.rewards(k)))}
    best = next(iter(mine(read_jsonl(paths.best(k)))), None)
    kept_id = best["trajectory_id"] if best else None
    shown = []
    for tr in trajectories:
        ex, rw = executions.get(tr["trajectory_id"], {}), rewards.get(tr["trajectory_id"], {})
        calls = []
        for j, call in enumerate(tr["calls"]):
            items = [i for i in ex.get("items", []) if i.get("call") == j]
            calls.append({"api": call["api"], "arg": call["arg"],
                          "items": [clip(item_text(i), ITEM_CHARS) for i in items]})
        lenses = {lens: {"gain": rw[f"{lens}_gain"], "scores": rw[f"{lens}_scores"]} for lens in ("metric", "likelihood")
                  if f"{lens}_gain" in rw}
        shown.append({"trajectory_id": tr["trajectory_id"], "source": tr.get("source", "optimizer"), "raw": tr["raw"],
                      "parse_error": tr.get("parse_error"),
                      "calls": calls, "cost": rw.get("cost", ex.get("cost")), "lenses": lenses, "reward": rw.get("reward"),
                      "cleared_noise": rw.get("accepted"), "kept": tr["trajectory_id"] == kept_id,
                      "errors": ex.get("errors", [])}
                     | ({"observed_check": {"gains": rw["observed_gains"], "kept": rw["check_kept"]}} if "check_kept" in rw else {}))
    view = {"task": {"id": task["id"], "name": task["name"], "category": task["category"], "metric": task["metric"]},
            "iteration": k, "iterations": done, "prompt": next((tr["prompt"] for tr in trajectories if "prompt" in tr), ""),
            "trajectories": shown, "kept": best}
    changed = settings_changed(params, paths, k)
    if changed:  # data/iter_K/ is working state: `dvc exp run` or a run with other settings leaves its own there
        view["warning"] = (f"data/iter_{k}/ was written with other settings ({', '.join(changed)});"
                           f" run `ads train` to bring it in line with params.yaml")
    if answers:
        view["answers"] = policy_answers(params, paths, task, best)
    return view


NOT_SHAPING = {"iterations", "tie_epsilon", "tie_epsilon_likelihood"}  # train keys that do not change data/iter_K


def settings_changed(params: dict, paths: Paths, k: int) -> list[str]:
    """The sample and train settings that differ between params and what wrote iteration K
    (as its manifests recorded them)."""
    changed = []
    for section, manifest in (("sample", paths.sample_manifest(k)), ("train", paths.train_manifest(k))):
        if manifest.exists():
            written = read_json(manifest)["params"]
            changed += [f"{section}.{key}" for key in sorted(params[section])
                        if key not in NOT_SHAPING and written.get(key) != params[section][key]]
    return changed


def kept_items(paths: Paths, best: dict | None) -> list[dict]:
    """The items the kept trajectory collected (it may come from an earlier iteration)."""
    if not best or not best["calls"] or not best.get("trajectory_id") or "iteration" not in best:
        return []
    for ex in read_jsonl(paths.executions(best["iteration"])):
        if ex["trajectory_id"] == best["trajectory_id"]:
            return ex["items"]
    return []


def policy_answers(params: dict, paths: Paths, task: dict, best: dict | None) -> list[dict]:
    """The policy's answers to the first held-out examples, without and with the kept data,
    updated as `train.update` says (the data in the prompt, or a LoRA fine-tune on it)."""
    shown = dict(task, heldout=task["heldout"][:SHOWN_EXAMPLES])
    policy = load_role(params, "policy", paths)
    t, max_tokens = params["train"], params["lm"]["max_new_tokens"]
    items = kept_items(paths, best)
    without = score_with_context(policy, shown, "", max_tokens, "inspect: no data", t["fewshot"])
    with_data = without
    if items and t["update"] == "lora":
        lenses, _ = score_after_lora(policy, shown, items, params)
        with_data = [{"answer": a, "score": s} for a, s in zip(lenses["answers"], lenses["metric"])]
    elif items:
        context = build_context(task, items, t["context_tokens"], policy.count_tokens)
        with_data = score_with_context(policy, shown, context, max_tokens, "inspect: kept data", t["fewshot"])
    return [{"question": clip(last_message(e["input"]), 300), "reference": e["reference"],
             "without": {"answer": a["answer"], "score": a["score"]}, "with_kept_data": {"answer": b["answer"], "score": b["score"]}}
            for e, a, b in zip(shown["heldout"], without, with_data)]


def render(view: dict):
    """The view for a terminal: rich panels and tables."""
    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    task = view["task"]
    parts = [f"[yellow]warning:[/] {escape(view['warning'])}"] if "warning" in view else []
    parts += [f"[bold]{escape(task['id'])}[/] — {escape(task['name'])} ({task['category']}, metric {task['metric']});"
             f" iteration {view['iteration']} of {', '.join(map(str, view['iterations']))}"]
    prompt_lines = view["prompt"].splitlines()
    folded = prompt_lines[:3] + [f"... ({len(prompt_lines) - 9} lines folded) ..."] + prompt_lines[-6:] if len(prompt_lines) > 12 else prompt_lines
    parts.append(Panel(escape("\n".join(folded)), title="optimizer prompt", border_style="dim"))
    for tr in view["trajectories"]:
        if tr["parse_error"]:
            body = f"[red]parse error:[/] {escape(tr['parse_error'])}\n[dim]the optimizer wrote:[/] {escape(tr['raw'])}"
        elif not tr["calls"]:
            body = "none (collect nothing)"
        else:
            body = "\n".join(f"[bold]{c['api']}[/]: {escape(c['arg'])}"
                             + ("".join(f"\n  [dim]·[/] {escape(i)}" for i in c["items"]) or "\n  [dim]· (nothing)[/]")
                             for c in tr["calls"])
        gains = ", ".join(f"{lens} {v['gain']:+.3f}" for lens, v in tr["lenses"].items())
        verdict = "[bold green]kept[/]" if tr["kept"] else ("cleared the noise" if tr["cleared_noise"] else "not accepted")
        reward = f"{tr['reward']:+.3f}" if tr["reward"] is not None else "—"
        stats = f"[dim]cost {tr['cost'] or 0:.0f} · gain {gains or '—'} · reward {reward} ·[/] {verdict}"
        if "observed_check" in tr:  # what `ads evaluate`'s check would have done with this data (not the reward)
            check = tr["observed_check"]
            stats += (f"\n[dim]observed check (deployed ADS): {'keeps' if check['kept'] else 'drops'} the data;"
                      f" gains on the observed examples {', '.join(f'{g:+.3f}' for g in check['gains'])}[/]")
        source = " (single call)" if tr["source"] == "single_call" else ""
        parts.append(Panel(stats + "\n" + body, title=f"trajectory {escape(tr['trajectory_id'].rsplit('#', 1)[1])}{source}",
                           title_align="left", border_style="green" if tr["kept"] else "dim"))
    kept = view["kept"]
    parts.append("kept: " + (escape(kept.get("trajectory_id") or "an earlier iteration's data") + f" (reward {kept['reward']:+.3f})"
                             if kept and kept["calls"]
                             else "nothing (no trajectory cleared the noise with a reward above the empty one's)"))
    if "answers" in view:
        answers = Table(title="the policy on held-out examples", show_lines=True)
        for column in ("question", "reference", "without data", "with the kept data"):
            answers.add_column(column, overflow="fold")
        for a in view["answers"]:
            answers.add_row(escape(a["question"]), escape(str(a["reference"])), escape(f"{a['without']['answer']} ({a['without']['score']:.1f})"),
                            escape(f"{a['with_kept_data']['answer']} ({a['with_kept_data']['score']:.1f})"))
        parts.append(answers)
    return Group(*parts)

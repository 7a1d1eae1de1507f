"""The optimizer's side of ADS: its few-shot prompt, the strict parser of what it writes, its
exemplars, and `propose`, which samples trajectories.

A 135M model follows a plain completion format with a few exemplars but not chat
instructions (measured: given the tools in a chat message it wrote `A: [search query]`), so the prompt is a completion prompt: the API list, a few
exemplars (iteration 1: the seed exemplars shipped with ads, labelled as such; later: the best
past trajectories of the same category, and a train task's own best one last, under the task's
own block), then the task with its observed examples and the policy's own answers and scores
(its self-knowledge). The optimizer writes one `api: argument` line per
call, `none` for "no data needed", and `end`.
"""

from __future__ import annotations

import re
from importlib import resources

import orjson

from ..engine.base import Model
from ..engine.grammar import LineGrammar
from ..engine.lora import with_adapter
from ..engine.roles import load_role
from ..jsonl import read_jsonl
from ..paths import Paths
from .tasks import clip, last_message, references

# stop at the end of the trajectory, and where a 135M optimizer starts copying the prompt's own
# fields (" | correct: ...", " (score 0.0)") into an argument
STOP = ["\nend", "\n\n", "\nTask:", " | ", " (score"]
_CALL = re.compile(r"^\s*(?P<api>[A-Za-z_][\w-]*)\s*:\s*(?P<arg>.*?)\s*$")


def seed_exemplars() -> list[dict]:
    text = resources.files("ads_cli.method").joinpath("seed_exemplars.jsonl").read_bytes()
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def _block(name: str, category: str, examples: list[tuple[str, str, str, float]]) -> str:
    lines = [f"Task: {name} ({category})"]
    for question, reference, answer, s in examples:
        lines.append(f"Example: {clip(question, 160)} | correct: {clip(reference, 40)} | model said: {clip(answer, 60)} (score {s:.1f})")
    lines.append("Calls:")
    return "\n".join(lines)


def format_calls(calls: list[dict]) -> str:
    """Calls in the optimizer's line format, `none` for an empty trajectory (what `parse_trajectory` reads)."""
    return "\n".join(f"{c['api']}: {c['arg']}" for c in calls) or "none"


def exemplar_text(exemplar: dict, block: str | None = None) -> str:
    """An exemplar's calls under `block`, by default its task's one-example block."""
    if block is None:
        block = _block(exemplar["task"], exemplar["category"], [(exemplar["example"], exemplar["reference"], exemplar["policy_answer"], exemplar["score"])])
    return block + "\n" + format_calls(exemplar["calls"]) + "\nend"


def header(api_descriptions: list[str]) -> str:
    return ("Tools that collect data to help a small model with a task:\n"
            + "\n".join(api_descriptions)
            + "\nnone -- collect nothing\n")


def build_prompt(task: dict, observed_answers: list[dict], exemplars: list[dict], api_descriptions: list[str]) -> str:
    """The completion prompt for one task: the policy's answers on its observed examples are
    its self-knowledge. Held-out examples never appear in it."""
    examples = []
    for example, b in zip(task["observed"], observed_answers):
        ref = example["reference"]
        examples.append((last_message(example["input"]), ref[0] if isinstance(ref, list) else ref, b["answer"], b["score"]))
    block = _block(task["name"], task["category"], examples)
    # the task's own best trajectory (a train task after iteration 1) is shown under the task's
    # whole block, as the optimizer saw it when it wrote it
    parts = [header(api_descriptions)] + [exemplar_text(e, block if e.get("task_id") == task["id"] else None) + "\n" for e in exemplars]
    parts.append(block + "\n")
    return "\n".join(parts)


def argument_quality(trajectories: list[dict], tasks: list[dict]) -> dict:
    """How useful the optimizer's arguments can be, over the parsed calls of `trajectories`.

    - `copies_reference`: the share that contain an observed example's reference: data about
      one example's answer cannot help a held-out question;
    - `span_of_task`: the share that are a span of the task's name or observed inputs;
    - `distinct`: how many different arguments there are.
    """
    by_id = {t["id"]: t for t in tasks}
    args, copies, spans = [], 0, 0
    for r in trajectories:
        task = by_id.get(r["task_id"])
        if task is None or "parse_error" in r:
            continue
        refs = [ref.lower() for e in task["observed"] for ref in references(e["reference"]) if len(ref.strip()) >= 2]
        text = " ".join([task["name"]] + [last_message(e["input"]) for e in task["observed"]]).lower()
        for call in r["calls"]:
            arg = " ".join(call["arg"].lower().split())
            args.append(arg)
            copies += any(ref in arg for ref in refs)
            spans += arg in " ".join(text.split())
    n = max(1, len(args))
    return {"arguments": len(args), "copies_reference": round(copies / n, 4), "span_of_task": round(spans / n, 4),
            "distinct": len(set(args))}


def error_kind(error: str) -> str:
    """'unknown API at line 2: 'search'' -> 'unknown API' (for counting errors by kind)."""
    return error.split(" at line")[0].split(" (")[0]


def parse_trajectory(raw: str, api_names: set[str], max_calls: int) -> tuple[list[dict], str | None]:
    """Strictly parse optimizer text into calls. Returns (calls, error); on error, calls is [].

    `none` as the first line is an explicit empty trajectory (valid). An unknown API, an empty
    argument, a line that is not `api: argument`, or no line at all is a parse error. Calls
    beyond `max_calls` are dropped.
    """
    calls: list[dict] = []
    for n, line in enumerate(raw.split("\n"), start=1):
        text = line.strip()
        if not text:
            continue
        if text.lower() == "end":
            break
        if text.lower().rstrip(".:") == "none":
            if calls:
                return [], f"none after calls at line {n}"
            return [], None
        m = _CALL.match(text)
        if not m:
            return [], f"not a call at line {n}: {clip(text, 40)!r} (expected 'api: argument')"
        api, arg = m["api"].lower(), m["arg"]
        if api not in api_names:
            return [], f"unknown API at line {n}: {api!r}"
        if not arg:
            return [], f"empty argument at line {n}: {api}"
        calls.append({"api": api, "arg": arg})
    if not calls:
        return [], "no calls (an empty trajectory is written 'none')"
    return calls[:max_calls], None


def select_exemplars(category: str, learned: list[dict], n: int, task_id: str | None = None) -> list[dict]:
    """Exemplars for task `task_id` of `category`: learned ones of the same category first (best
    reward first), then other learned ones, then the seeds.

    If the task has a learned exemplar of its own (a train task after iteration 1: its best
    trajectory so far, `none` included), it goes last, nearest the task's block, and the others
    fill the first n - 1 places: the most similar task is the task itself, and without this the
    optimizer forgot a task's best trajectory the iteration after finding it (measured: sarcasm's
    +0.66 bits per byte in iteration 1, `none` in all four of its iteration-2 trajectories). A
    task with none of its own (every test task) gets the category's n, so those tasks share one
    prompt prefix; train tasks from iteration 2 on differ from their first exemplar, so their
    prompts share only the API list."""
    if n == 0:
        return []
    is_mine = [task_id is not None and e.get("task_id") == task_id for e in learned]
    mine = [e for e, m in zip(learned, is_mine) if m]
    own = [max(mine, key=lambda e: e["reward"])] if mine else []
    others = sorted((e for e, m in zip(learned, is_mine) if not m), key=lambda e: (e["category"] != category, -e["reward"], e["task"]))
    chosen = others[: n - len(own)]
    return chosen + seed_exemplars()[: n - len(own) - len(chosen)] + own


def exemplar_from(task: dict, observed_answers: list[dict], calls: list[dict], reward: float, iteration: int,
                  trajectory_id: str | None = None, source: str | None = None) -> dict:
    """A learned exemplar in the seed exemplars' schema, from a task's best trajectory (None:
    the empty one), and where it came from (`source`: optimizer or single_call)."""
    example = task["observed"][0]
    ref = example["reference"]
    return {"seed": False, "task": task["name"], "task_id": task["id"], "category": task["category"],
            "example": last_message(example["input"]), "reference": ref[0] if isinstance(ref, list) else ref,
            "policy_answer": observed_answers[0]["answer"], "score": observed_answers[0]["score"],
            "calls": calls, "reward": reward, "iteration": iteration, "trajectory_id": trajectory_id, "source": source}


def load_exemplars(paths: Paths, iteration: int) -> list[dict]:
    """The optimizer's learned exemplars going into `iteration` (none before the first)."""
    if iteration <= 1:
        return []
    return read_jsonl(paths.require(paths.exemplars(iteration - 1), f"ads train --iter {iteration - 1}"))


def load_optimizer(params: dict, paths: Paths, iteration: int) -> tuple[Model, list[dict]]:
    """The optimizer going into `iteration`: its model (LoRA-tuned under `sft`) and learned exemplars."""
    exemplars = load_exemplars(paths, iteration)
    optimizer = load_role(params, "optimizer", paths)
    if iteration > 1 and params["train"]["optimizer_update"] == "sft":
        optimizer = with_adapter(optimizer, paths.optimizer_lora(iteration - 1))
    return optimizer, exemplars


def single_call(task: dict, api: str) -> list[dict]:
    """`api` called once on the task's first observed question: the `<api>_only` baseline's
    trajectory, and a candidate beside the optimizer's own, in training (`sample.single_calls`)
    and at evaluation (`evaluate.single_calls`)."""
    return [{"api": api, "arg": last_message(task["observed"][0]["input"])[:200]}]


def single_call_records(tasks: list[dict], apis: list[str], iteration: int) -> list[dict]:
    """Trajectory records (as `propose` writes them) of each API in `apis` called once per task
    (`single_call`), marked `source: single_call`: exploration that rejection sampling may keep,
    so that the optimizer can learn it, and that the optimizer's own figures leave out."""
    return [{"task_id": t["id"], "trajectory_id": f"{t['id']}#{iteration}.{api}_only", "iteration": iteration,
             "calls": single_call(t, api), "raw": "", "cost": 0, "source": "single_call"} for t in tasks for api in apis]


def call_grammar(api_names: list[str]) -> LineGrammar:
    """Every line starts with an API name, `none` (first line only) or `end`."""
    calls = [f"{name}:" for name in api_names]
    return LineGrammar(calls + ["end"], first_line_options=calls + ["none"], terminal=["none", "end"])


def propose(optimizer: Model, tasks: list[dict], observed_answers: dict, learned: list[dict], apis: dict, sample: dict, *,
            iteration: int, n_trajectories: int, temperature: float, label: str = "sample", first: int = 0) -> list[dict]:
    """The optimizer writes `n_trajectories` per task, numbered from `first`; trajectory j is
    sampled with seed + j.

    `observed_answers` maps a task id to the policy's answers on its observed examples;
    `learned` are the exemplars learned so far; `sample` is the params section.
    """
    descriptions = [getattr(a, "description", f"{name}: <argument>") for name, a in apis.items()]
    grammar = call_grammar(list(apis)) if sample["constrained"] else None
    # tasks of one category are sampled together: those without an exemplar of their own (test
    # tasks, iteration 1) share their exemplars, hence a prompt prefix the engine computes once
    groups: dict[str, list[dict]] = {}
    for task in tasks:
        groups.setdefault(task["category"], []).append(task)
    records = []
    for category, group in sorted(groups.items()):
        chosen = [select_exemplars(category, learned, sample["n_exemplars"], t["id"]) for t in group]
        prompts = [build_prompt(t, observed_answers[t["id"]], e, descriptions) for t, e in zip(group, chosen)]
        for j in range(first, first + n_trajectories):
            gens = optimizer.generate(prompts, max_new_tokens=sample["max_new_tokens"], temperature=temperature,
                                      seed=sample["seed"] + j, stop=STOP, chat=False, grammar=grammar,
                                      desc=f"{label}: {category} trajectory {j + 1}/{first + n_trajectories}")
            for task, prompt, exemplars, g in zip(group, prompts, chosen, gens):
                calls, error = ([], f"generation failed ({g.error})") if g.error else parse_trajectory(g.text, set(apis), sample["max_calls"])
                record = {"task_id": task["id"], "trajectory_id": f"{task['id']}#{iteration}.{j}", "iteration": iteration,
                          "calls": calls, "raw": g.text, "cost": g.cost, "prompt": prompt, "source": "optimizer",
                          "exemplars": [e.get("task_id", e["task"]) for e in exemplars]}
                if error:
                    record["parse_error"] = error
                records.append(record)
    return sorted(records, key=lambda r: r["trajectory_id"])

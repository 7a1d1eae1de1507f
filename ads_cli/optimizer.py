"""The optimizer's side of ADS: its few-shot prompt, and the strict parser of what it writes.

A 135M model follows a plain completion format with a few exemplars but not chat
instructions (DESIGN.md section 8), so the prompt is a completion prompt: the API list, a few
exemplars (iteration 1: the seed exemplars shipped with ads, labelled as such; later: the best
past trajectories of similar tasks), then the task with its observed examples and the policy's
own answers and scores (its self-knowledge). The optimizer writes one `api: argument` line per
call, `none` for "no data needed", and `end`.
"""

from __future__ import annotations

import re
from importlib import resources

import orjson

from .prepare import last_message

# stop at the end of the trajectory, and where a 135M optimizer starts copying the prompt's own
# fields (" | correct: ...", " (score 0.0)") into an argument
STOP = ["\nend", "\n\n", "\nTask:", " | ", " (score"]
_CALL = re.compile(r"^\s*(?P<api>[A-Za-z_][\w-]*)\s*:\s*(?P<arg>.*?)\s*$")


def seed_exemplars() -> list[dict]:
    text = resources.files("ads_cli").joinpath("seed_exemplars.jsonl").read_bytes()
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _block(name: str, category: str, examples: list[tuple[str, str, str, float]]) -> str:
    lines = [f"Task: {name} ({category})"]
    for question, reference, answer, s in examples:
        lines.append(f"Example: {_clip(question, 160)} | correct: {_clip(reference, 40)} | model said: {_clip(answer, 60)} (score {s:.1f})")
    lines.append("Calls:")
    return "\n".join(lines)


def format_calls(calls: list[dict]) -> str:
    """Calls in the optimizer's line format, `none` for an empty trajectory (what `parse_trajectory` reads)."""
    return "\n".join(f"{c['api']}: {c['arg']}" for c in calls) or "none"


def exemplar_text(exemplar: dict) -> str:
    block = _block(exemplar["task"], exemplar["category"], [(exemplar["example"], exemplar["reference"], exemplar["policy_answer"], exemplar["score"])])
    return block + "\n" + format_calls(exemplar["calls"]) + "\nend"


def header(api_descriptions: list[str]) -> str:
    return ("Tools that collect data to help a small model with a task:\n"
            + "\n".join(api_descriptions)
            + "\nnone -- collect nothing\n")


def build_prompt(task: dict, baseline: list[dict], exemplars: list[dict], api_descriptions: list[str]) -> str:
    """The completion prompt for one task. Held-out examples never appear in it."""
    examples = []
    for example, b in zip(task["observed"], baseline):
        ref = example["reference"]
        examples.append((last_message(example["input"]), ref[0] if isinstance(ref, list) else ref, b["answer"], b["score"]))
    parts = [header(api_descriptions)] + [exemplar_text(e) + "\n" for e in exemplars]
    parts.append(_block(task["name"], task["category"], examples) + "\n")
    return "\n".join(parts)


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
            return [], f"not a call at line {n}: {_clip(text, 40)!r} (expected 'api: argument')"
        api, arg = m["api"].lower(), m["arg"]
        if api not in api_names:
            return [], f"unknown API at line {n}: {api!r}"
        if not arg:
            return [], f"empty argument at line {n}: {api}"
        calls.append({"api": api, "arg": arg})
    if not calls:
        return [], "no calls (an empty trajectory is written 'none')"
    return calls[:max_calls], None


def select_exemplars(category: str, state: list[dict], n: int) -> list[dict]:
    """Exemplars for a task of `category`: learned ones of the same category first (best reward
    first), then other learned ones, then the seeds. Depends only on the category, so all tasks
    of a category share one prompt prefix."""
    learned = sorted(state, key=lambda e: (e["category"] != category, -e["reward"], e["task"]))
    chosen = learned[:n]
    return chosen + seed_exemplars()[: n - len(chosen)]


def exemplar_from(task: dict, baseline: list[dict], calls: list[dict], reward: float, iteration: int) -> dict:
    """A learned exemplar in the seed exemplars' schema, from a task's best trajectory."""
    example = task["observed"][0]
    ref = example["reference"]
    return {"seed": False, "task": task["name"], "task_id": task["id"], "category": task["category"],
            "example": last_message(example["input"]), "reference": ref[0] if isinstance(ref, list) else ref,
            "policy_answer": baseline[0]["answer"], "score": baseline[0]["score"],
            "calls": calls, "reward": reward, "iteration": iteration}

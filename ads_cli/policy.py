"""The policy: answering a task's examples, and scoring those answers with the task's metric."""

from __future__ import annotations

from typing import Any

from .lm import LM, Generation
from .metrics import score


def example_messages(example_input: Any, context: str = "") -> list[dict]:
    """An example's input as chat messages; `context` (collected data) goes in front of it."""
    messages = [{"role": "user", "content": example_input}] if isinstance(example_input, str) else [dict(m) for m in example_input]
    if context:
        messages.insert(0, {"role": "system", "content": f"Use this information if it helps.\n{context}"})
    return messages


def answer_examples(model: LM, tasks: list[dict], split: str, max_new_tokens: int, desc: str) -> dict[str, list[dict]]:
    """task id -> [{answer, score, tokens}] for each example of `split` ("observed" or "heldout")."""
    prompts, where = [], []
    for task in tasks:
        for j, example in enumerate(task[split]):
            prompts.append(example_messages(example["input"]))
            where.append((task, j))
    gens: list[Generation] = model.generate(prompts, max_new_tokens=max_new_tokens, desc=desc) if prompts else []
    out: dict[str, list[dict]] = {t["id"]: [] for t in tasks}
    for (task, j), g in zip(where, gens):
        ref = task[split][j]["reference"]
        out[task["id"]].append({"answer": g.text, "score": score(task["metric"], g.text, ref), "tokens": g.cost})
    return out

"""The policy: its prompt (the context layout), its answers, and their scores in two lenses.

- the **metric** lens: the policy answers (greedy) and the task's metric scores the answer;
- the **likelihood** lens: the teacher-forced log-probability of the reference, the best over
  the example's references, in bits per UTF-8 byte of the reference (lm-evaluation-harness's
  bits per byte, negated so that higher is better). It does not depend on the tokenizer, and it
  sees the small effects of data that the metric of a 135M policy cannot.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from ..cache import call_key
from ..engine import lora
from ..engine.base import Generation, LikelihoodUnavailable, Model
from ..errors import AdsError
from ..progress import log
from .metrics import score
from .reward import clears_noise, gains
from .tasks import last_message, references

BITS = 1 / math.log(2)


def example_messages(example_input: Any, context: str = "", demonstrations: Sequence[dict] = ()) -> list[dict]:
    """The policy's prompt for one example: the context layout, in one place.

    1. `context`, the collected data, first, in a system message;
    2. `demonstrations` (examples of the task, `{input, reference}`) as user/assistant turns,
       nearest the question;
    3. the example's own messages.
    Measured on 24 knowledge tasks with the 3 observed examples as demonstrations: passages
    placed between the demonstrations and the question lowered the reference likelihood
    (-0.40 [-0.68, -0.16]); placed before them, retrieval on the task's name raised it
    (+0.34 [+0.17, +0.52]).
    """
    messages = [{"role": "system", "content": f"Use this information if it helps.\n{context}"}] if context else []
    for demo in demonstrations:
        messages += [{"role": "user", "content": last_message(demo["input"])},
                     {"role": "assistant", "content": references(demo["reference"])[0]}]
    own = [{"role": "user", "content": example_input}] if isinstance(example_input, str) else [dict(m) for m in example_input]
    return messages + own


def demonstrations(task: dict, fewshot: bool) -> list[dict]:
    """The demonstrations of the policy's prompt: the task's observed examples when `fewshot`."""
    return list(task["observed"]) if fewshot else []


def answer_observed(model: Model, tasks: list[dict], params: dict, desc: str) -> dict[str, list[dict]]:
    """task id -> [{answer, score, tokens}] for each observed example, answered with no collected
    data: the policy's self-knowledge that the optimizer reads.

    The prompt is the policy's default layout, so the optimizer sees the policy the reward
    scores: with `train.fewshot` the other observed examples demonstrate (an example is never
    its own demonstration: leave one out)."""
    prompts, where = [], []
    for task in tasks:
        prompts += leave_one_out_prompts(task, "", params["train"]["fewshot"])
        where += [(task, j) for j in range(len(task["observed"]))]
    gens: list[Generation] = model.generate(prompts, max_new_tokens=params["lm"]["max_new_tokens"], desc=desc) if prompts else []
    out: dict[str, list[dict]] = {t["id"]: [] for t in tasks}
    for (task, j), g in zip(where, gens):
        out[task["id"]].append(scored(task["metric"], g, task["observed"][j]["reference"]))
    return out


def leave_one_out_prompts(task: dict, context: str, fewshot: bool) -> list[list[dict]]:
    """The policy's prompts for the task's observed examples: each with `context` and, with
    `fewshot`, the other observed examples as demonstrations (never itself)."""
    demos = demonstrations(task, fewshot)
    return [example_messages(e["input"], context, [d for k, d in enumerate(demos) if k != j]) for j, e in enumerate(task["observed"])]


def scored(metric: str, g: Generation, reference: str) -> dict:
    """One answer's record; a failed server request scores 0 and says why."""
    record = {"answer": g.text, "score": score(metric, g.text, reference), "tokens": g.cost}
    if g.error:
        record["error"] = g.error
    return record


_WORDS = re.compile(r"\w+")


def item_text(item: dict) -> str:
    """How a collected item reads in the policy's context."""
    kind = item.get("kind")
    if kind == "demonstration":
        return f"Q: {item['instruction']}\nA: {item['response']}"
    if kind == "qa":
        return f"Q: {item['question']}\nA: {item['answer']}"
    title = item.get("title")
    return f"{title}: {item['text']}" if title else str(item.get("text", ""))


def build_context(task: dict, items: list[dict], budget_tokens: int, count_tokens) -> str:
    """The collected items, most relevant first, under a token budget.

    Relevance is word overlap with the task's name and observed inputs (never the held-out
    ones). One context per trajectory, the same for all its held-out questions: the prompts
    then share a prefix whose KV cache the engine computes once.
    """
    if not items:
        return ""
    task_words = set(_WORDS.findall(" ".join([task["name"]] + [last_message(e["input"]) for e in task["observed"]]).lower()))
    texts = list(dict.fromkeys(item_text(i) for i in items))  # identical items once, first kept

    def relevance(pair):
        index, text = pair
        words = set(_WORDS.findall(text.lower()))
        return (-len(words & task_words) / (1 + len(words)) ** 0.5, index)

    chosen, used = [], 0
    for _, text in sorted(enumerate(texts), key=relevance):
        n = count_tokens(text)
        if used + n > budget_tokens:
            continue
        chosen.append(text)
        used += n
    return "\n\n".join(chosen)


def _prompts(task: dict, context: str | list[str], fewshot: bool) -> list[list[dict]]:
    examples = task["heldout"]
    contexts = context if isinstance(context, list) else [context] * len(examples)
    demos = demonstrations(task, fewshot)
    return [example_messages(e["input"], c, demos) for e, c in zip(examples, contexts)]


def score_with_context(model: Model, task: dict, context: str | list[str], max_new_tokens: int, desc: str = "score",
                       fewshot: bool = False) -> list[dict]:
    """Metric lens: the policy answers the held-out examples with `context` in its prompt;
    returns [{answer, score, tokens}].

    One context for all examples (their prompts then share a prefix), or one per example.
    """
    gens = model.generate(_prompts(task, context, fewshot), max_new_tokens=max_new_tokens, desc=desc)
    return [scored(task["metric"], g, e["reference"]) for e, g in zip(task["heldout"], gens)]


def _pairs(model: Model, examples: list[dict], prompts: list[list[dict]]):
    pairs, owners = [], []
    for j, (example, messages) in enumerate(zip(examples, prompts)):
        prompt = model.render(messages)
        for ref in references(example["reference"]):
            if ref:
                pairs.append((prompt, ref))
                owners.append((j, len(ref.encode("utf-8"))))
    return pairs, owners


def _likelihood_pairs(model: Model, task: dict, context: str | list[str], fewshot: bool):
    return _pairs(model, task["heldout"], _prompts(task, context, fewshot))


def _bits_per_byte(model: Model, task: dict, which: str, prompts: list[list[dict]], desc: str) -> list[float]:
    """Per example of `task[which]`: the best over its references of log2 p(reference | its
    prompt) per UTF-8 byte of the reference, all pairs in one engine call (prompts that share a
    prefix share its KV cache). Every example has a non-empty reference (`validate_task`)."""
    pairs, owners = _pairs(model, task[which], prompts)
    values = model.loglikelihood(pairs, desc=desc) if pairs else []
    best = [-math.inf] * len(task[which])
    for (j, n_bytes), value in zip(owners, values):
        best[j] = max(best[j], value * BITS / n_bytes)
    if -math.inf in best:
        where = "held-out" if which == "heldout" else which
        raise AdsError(f"task {task['id']}: {where} example {best.index(-math.inf) + 1} has no non-empty reference to score")
    return [round(b, 6) for b in best]


def likelihood_scores(model: Model, task: dict, context: str | list[str], desc: str = "likelihood",
                      fewshot: bool = False) -> list[float]:
    """Likelihood lens: per held-out example, the best over its references of log2 p(reference |
    prompt) per UTF-8 byte of the reference. The prompts of one context share a prefix whose KV
    cache the engine computes once."""
    return _bits_per_byte(model, task, "heldout", _prompts(task, context, fewshot), desc)


def observed_scores(model: Model, task: dict, context: str, lens: str, max_new_tokens: int, desc: str,
                    fewshot: bool) -> list[float]:
    """One lens on the task's observed examples (never the held-out ones), each answered with
    `context` and, with `fewshot`, the other observed examples as demonstrations (leave one out,
    as `answer_observed`): what a deployed ADS can check its collected data against. One engine
    call for all of them, so the context's KV cache is computed once."""
    prompts = leave_one_out_prompts(task, context, fewshot)
    if lens == "likelihood":
        return _bits_per_byte(model, task, "observed", prompts, desc)
    gens = model.generate(prompts, max_new_tokens=max_new_tokens, desc=desc)
    return [scored(task["metric"], g, e["reference"])["score"] for e, g in zip(task["observed"], gens)]


def observed_baseline(model: Model, task: dict, params: dict, desc: str) -> list[float]:
    """The observed examples' scores with no collected data (`observed_scores` in the
    `train.reward` lens): what `observed_check` measures gains against, once per task."""
    t = params["train"]
    return observed_scores(model, task, "", t["reward"], params["lm"]["max_new_tokens"], f"{desc} (no data)", t["fewshot"])


def observed_check(model: Model, task: dict, context: str, params: dict, seed: int, desc: str, without: list[float]) -> dict:
    """What a deployed ADS can know of its collected data before using it: the gain of `context`
    on the task's observed examples over `without` (`observed_baseline`), in the `train.reward`
    lens, and whether it clears the noise, training's acceptance rule (`clears_noise`).
    Returns {"observed_gains", "kept"}."""
    t = params["train"]
    observed_gains = gains(observed_scores(model, task, context, t["reward"], params["lm"]["max_new_tokens"], desc, t["fewshot"]),
                           without)
    return {"observed_gains": observed_gains, "kept": clears_noise(observed_gains, seed)}


def require_likelihood(policy: Model, needed_by: str) -> None:
    """Stop before any work when the policy cannot score likelihoods (a server without correct
    prompt logprobs), saying what to set instead."""
    try:
        policy.loglikelihood([(policy.render("Name the capital of France."), "Paris")], desc="likelihood check")
    except LikelihoodUnavailable as e:  # other errors (unreachable, key refused) say what they are themselves
        raise AdsError(f"{needed_by} needs the likelihood lens, and the policy cannot score it: {e}."
                       f" Set lm.policy_backend=local, or score in the metric lens only (train.reward=metric,"
                       f" evaluate.likelihood=false)") from None


def score_lenses(model: Model, task: dict, context: str | list[str], max_new_tokens: int, desc: str,
                 fewshot: bool, likelihood: bool = True) -> dict[str, list]:
    """The lenses on the held-out examples: {"metric": [score], "likelihood": [score] (if
    `likelihood`), "answers": [text]}."""
    answers = score_with_context(model, task, context, max_new_tokens, desc=desc, fewshot=fewshot)
    lenses = {"metric": [a["score"] for a in answers], "answers": [a["answer"] for a in answers]}
    if likelihood:
        lenses["likelihood"] = likelihood_scores(model, task, context, desc, fewshot)
    return lenses


def score_update(policy: Model, task: dict, items: list[dict], params: dict, desc: str) -> tuple[dict[str, list], float | None]:
    """The policy after the update with `items`, in both lenses, and the LoRA seconds (None for icl).

    `train.update: icl` puts the items into the prompt (under `train.context_tokens`);
    `lora` fine-tunes a fresh adapter on them. `train.fewshot` keeps the observed examples as
    demonstrations either way.
    """
    t, max_tokens = params["train"], params["lm"]["max_new_tokens"]
    if t["update"] == "lora":
        return score_after_lora(policy, task, items, params)
    context = build_context(task, items, t["context_tokens"], policy.count_tokens)
    return score_lenses(policy, task, context, max_tokens, desc, t["fewshot"], t["reward"] == "likelihood"), None


def item_pairs(policy: Model, items: list[dict]) -> list[tuple[str, str]]:
    """Training pairs for a LoRA update: demonstrations and QA pairs become (rendered
    instruction, response); passages become plain text."""
    pairs = []
    for item in items:
        if item.get("kind") == "demonstration":
            pairs.append((policy.render(item["instruction"]), item["response"]))
        elif item.get("kind") == "qa":
            pairs.append((policy.render(item["question"]), item["answer"]))
        else:
            pairs.append(("", item_text(item)))
    return pairs


def score_after_lora(policy: Model, task: dict, items: list[dict], params: dict) -> tuple[dict[str, list], float]:
    """The `lora` update: fine-tune a fresh adapter on `items`, score the held-out examples in
    both lenses, remove the adapter. Returns (lenses, seconds of fine-tuning; 0 when cached)."""
    max_tokens, fewshot = params["lm"]["max_new_tokens"], params["train"]["fewshot"]
    tuned = lora.renamed(policy, call_key("lora", policy.model_id, [item_text(i) for i in items], lora.lora_settings(params["train"])))
    likelihood = params["train"]["reward"] == "likelihood"
    answered = tuned.all_cached(_prompts(task, "", fewshot), max_tokens)
    if answered and (not likelihood or tuned.all_scored(_likelihood_pairs(tuned, task, "", fewshot)[0])):
        return score_lenses(tuned, task, "", max_tokens, "train: policy after LoRA", fewshot, likelihood), 0.0  # answered before
    lenses, seconds = lora.with_fresh_adapter(policy, params["train"], item_pairs(policy, items), tuned.model_id,
                                              lambda model: score_lenses(model, task, "", max_tokens, "train: policy after LoRA",
                                                                         fewshot, likelihood))
    log.info("lora: %s, %d items, %.1fs", task["id"], len(items), seconds)
    return lenses, seconds

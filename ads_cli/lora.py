"""LoRA with peft: the policy's `lora` update and the optimizer's `sft` update.

Both are opt-in: on this CPU 20 steps of batch 8 take tens of seconds (DESIGN.md section 6), so
a fine-tune per trajectory costs minutes; each records its time.
"""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path

from .cache import call_key
from .lm import LM, _torch
from .paths import Paths
from .policy import example_messages, item_text, score_with_context
from .progress import log


def _config(params: dict):
    from peft import LoraConfig

    t = params["train"]
    return LoraConfig(r=t["lora_r"], lora_alpha=2 * t["lora_r"], target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")


def finetune(peft_model, lm: LM, pairs: list[tuple[str, str]], params: dict) -> float:
    """Train `peft_model` on (rendered prompt, completion) pairs; loss on the completion only.

    Returns the seconds it took.
    """
    torch = _torch()
    t = params["train"]
    started = time.monotonic()
    rng = random.Random(t["seed"])
    torch.manual_seed(t["seed"])
    examples = []
    for prompt, completion in pairs:
        p = lm.tok(prompt, add_special_tokens=False).input_ids
        c = lm.tok(completion, add_special_tokens=False).input_ids + [lm.tok.eos_token_id]
        ids = (p + c)[-t["lora_max_tokens"]:]
        labels = ([-100] * len(p) + c)[-t["lora_max_tokens"]:]
        examples.append((ids, labels))
    optim = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=t["lora_lr"])
    peft_model.train()
    order: list[int] = []
    for _ in range(t["lora_steps"]):
        batch = []
        while len(batch) < t["lora_batch"]:
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            batch.append(examples[order.pop()])
        width = max(len(ids) for ids, _ in batch)
        pad = lm.tok.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = peft_model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    peft_model.eval()
    return time.monotonic() - started


def item_pairs(lm: LM, items: list[dict]) -> list[tuple[str, str]]:
    """Demonstrations and QA pairs become instruction pairs; passages become plain text."""
    pairs = []
    for item in items:
        if item.get("kind") == "demonstration":
            pairs.append((lm.render(item["instruction"]), item["response"]))
        elif item.get("kind") == "qa":
            pairs.append((lm.render(item["question"]), item["answer"]))
        else:
            pairs.append(("", item_text(item)))
    return pairs


def score_after_lora(policy: LM, task: dict, items: list[dict], params: dict) -> tuple[list[dict], float]:
    """Fine-tune a fresh LoRA adapter on `items`, answer the held-out examples, remove the adapter."""
    from peft import get_peft_model

    key = call_key("lora", policy.weights_hash, [item_text(i) for i in items], params["train"])
    tuned = LM(policy.model, policy.tok, key, policy.name, policy.batch_size, policy.cache)
    max_tokens = params["lm"]["max_new_tokens"]
    if tuned.all_cached([example_messages(e["input"]) for e in task["heldout"]], max_tokens):
        return score_with_context(tuned, task, "", max_tokens), 0.0  # this adapter answered before
    peft_model = get_peft_model(policy.model, _config(params))
    try:
        seconds = finetune(peft_model, policy, item_pairs(policy, items), params)
        tuned.model = peft_model
        scored = score_with_context(tuned, task, "", max_tokens, desc="train: policy after LoRA")
    finally:
        peft_model.unload()  # take the LoRA layers out again: the shared base model is unchanged
    log.info("lora: %s, %d items, %.1fs", task["id"], len(items), seconds)
    return scored, seconds


def adapter_dir(paths: Paths, iteration: int) -> Path:
    return paths.iteration(iteration) / "optimizer_lora"


def train_optimizer_sft(params: dict, optimizer: LM, pairs: list[tuple[str, str]], out: Path) -> float:
    """LoRA-tune a copy of the optimizer on (prompt -> best trajectory) pairs; save the adapter."""
    from peft import get_peft_model

    peft_model = get_peft_model(copy.deepcopy(optimizer.model), _config(params))
    seconds = finetune(peft_model, optimizer, pairs, params)
    peft_model.save_pretrained(out)
    return seconds


def load_tuned_optimizer(optimizer: LM, adapter: Path) -> LM:
    """The optimizer with a saved adapter, on its own copy of the weights (the policy may share them)."""
    from peft import PeftModel

    from .jsonl import sha256_file

    model = PeftModel.from_pretrained(copy.deepcopy(optimizer.model), str(adapter))
    model.eval()
    digest = call_key(optimizer.weights_hash, *[sha256_file(p) for p in sorted(adapter.glob("*.safetensors"))])
    return LM(model, optimizer.tok, digest, f"{optimizer.name}+{adapter}", optimizer.batch_size, optimizer.cache)

"""LoRA with peft: the policy's `lora` update and the optimizer's `sft` update.

Both are opt-in: on this CPU 20 steps of batch 8 x 25 tokens took 48 s, so a fine-tune per
trajectory costs minutes; each records its time. Both need the local backend: they change the
weights themselves.
"""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path

from ..cache import call_key
from ..errors import AdsError
from ..jsonl import sha256_file
from ..progress import phase
from .base import Model
from .local import LocalModel
from .weights import _torch


# the train settings a fine-tune depends on (its cache key hashes them, and only them)
LORA_SETTINGS = ("lora_r", "lora_lr", "lora_steps", "lora_batch", "lora_max_tokens", "seed")


def lora_settings(train: dict) -> dict:
    return {k: train[k] for k in LORA_SETTINGS}


def fresh_peft_model(model, train: dict):
    """`model` with a new LoRA adapter, initialised from `train.seed` (the adapter's A matrices
    are drawn at random: unseeded, two runs would fine-tune from different starts)."""
    from peft import get_peft_model

    _torch().manual_seed(train["seed"])
    return get_peft_model(model, lora_config(train))


def lora_config(train: dict):
    from peft import LoraConfig

    t = train
    return LoraConfig(r=t["lora_r"], lora_alpha=2 * t["lora_r"], target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")


def finetune(peft_model, lm: LocalModel, pairs: list[tuple[str, str]], train: dict) -> float:
    """Train `peft_model` on (rendered prompt, completion) pairs; loss on the completion only.

    Returns the seconds it took.
    """
    torch = _torch()
    t = train
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


def renamed(lm: Model, model_id: str) -> LocalModel:
    """The same weights under another `model_id`: the cache keys of a fine-tune's answers."""
    if not isinstance(lm, LocalModel):
        raise AdsError("train.update=lora fine-tunes the policy's weights, which needs lm.policy_backend=local")
    return LocalModel(lm.model, lm.tok, model_id, lm.name, lm.batch_size, lm.cache, role=lm.role,
                       batch_tokens=lm.batch_tokens)


def with_fresh_adapter(lm: LocalModel, train: dict, pairs: list[tuple[str, str]], model_id: str, use) -> tuple[object, float]:
    """Fine-tune a fresh LoRA adapter on `pairs`, call `use(tuned model)`, then remove the adapter.

    Returns (what `use` returned, seconds of fine-tuning). The base model is shared (the policy
    and the optimizer may be the same weights), so the adapter is taken out again even when
    `use` raises.
    """
    peft_model = fresh_peft_model(lm.model, train)
    try:
        with phase(f"{lm.role}: LoRA fine-tune"):
            seconds = finetune(peft_model, lm, pairs, train)
        tuned = renamed(lm, model_id)
        tuned.model = peft_model
        return use(tuned), seconds
    finally:
        peft_model.unload()


def train_optimizer_sft(train: dict, optimizer: Model, pairs: list[tuple[str, str]], out: Path) -> float:
    """LoRA-tune a copy of the optimizer on (prompt -> best trajectory) pairs; save the adapter."""
    if not isinstance(optimizer, LocalModel):
        raise AdsError("train.optimizer_update=sft fine-tunes the optimizer's weights, which needs lm.optimizer_backend=local")
    peft_model = fresh_peft_model(copy.deepcopy(optimizer.model), train)
    with phase("optimizer: LoRA fine-tune"):
        seconds = finetune(peft_model, optimizer, pairs, train)
    peft_model.save_pretrained(out)
    return seconds


def with_adapter(optimizer: Model, adapter: Path) -> Model:
    """The optimizer with the LoRA adapter `sft` saved (as it is when none was saved), on its
    own copy of the weights (the policy may share them)."""
    if not adapter.exists():
        return optimizer
    if not isinstance(optimizer, LocalModel):
        raise AdsError(f"{adapter}: a LoRA adapter trained with optimizer_update=sft needs lm.optimizer_backend=local")
    if optimizer.model_id.endswith((":int8", ":bf16")):
        raise AdsError(f"{adapter}: a LoRA adapter (optimizer_update=sft) applies to fp32 weights: set lm.dtype=fp32,"
                       f" or remove the adapter")
    if optimizer.model_id.endswith(":onednn"):
        raise AdsError(f"{adapter}: a LoRA adapter (optimizer_update=sft) applies to plain linear layers: set"
                       f" train.optimizer_update=sft or lm.gemm=blas, or remove the adapter")
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(optimizer.model), str(adapter))
    model.eval()
    digest = call_key(optimizer.model_id, *[sha256_file(p) for p in sorted(adapter.glob("*.safetensors"))])
    return LocalModel(model, optimizer.tok, digest, f"{optimizer.name}+{adapter}", optimizer.batch_size, optimizer.cache,
                      role=optimizer.role, batch_tokens=optimizer.batch_tokens)

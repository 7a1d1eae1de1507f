"""The local engine's attention: transformers' SDPA, without copying the keys and values of
grouped heads when a mask is given.

SmolLM2-135M has 9 query heads over 3 key/value heads. transformers passes SDPA grouped heads as
they are (`enable_gqa`) only without a mask; with one (a left-padded batch: likelihood scoring;
rows packed into one sequence), it first repeats each key and value head 3 times
(`repeat_kv`), a copy of the whole KV cache in every layer at every forward pass. In a scoring
call of 16 pairs after a 310-token prefix, those copies (16 rows x 336 positions, 12 MB per
tensor) took 1.08 s of the call's 2.7 s (torch profile). torch's CPU SDPA takes grouped heads
with a mask as well, and gives the same bits: the scores of bench_lm's pairs are identical, and
a test checks it. A query of one position (a decoding step) keeps transformers' own path (its
`pack_gqa`): SDPA's grouped kernel sums that case in another order.
"""

from __future__ import annotations

import functools

NAME = "ads_sdpa"


@functools.cache
def register() -> str:
    """Register the attention under NAME with transformers (its masks are SDPA's); returns NAME."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    def forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        grouped = getattr(module, "num_key_value_groups", 1) > 1
        if grouped and attention_mask is not None and query.shape[2] > 1 and kwargs.get("position_bias") is None:
            out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                                                   scale=scaling, enable_gqa=True)
            return out.transpose(1, 2).contiguous(), None
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)

    AttentionInterface.register(NAME, forward)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return NAME


def use_grouped_sdpa(model) -> bool:
    """Switch a model that runs transformers' SDPA to this attention, in place. Returns whether it did."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    model.set_attn_implementation(register())
    return model.config._attn_implementation == NAME

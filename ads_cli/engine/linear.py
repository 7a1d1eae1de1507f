"""How the local engine's linear layers multiply: oneDNN with pre-packed fp32 or bfloat16 weights
(lm.gemm=onednn, lm.dtype=bf16), or torch.ao's dynamic int8 quantization (lm.dtype=int8).
`weights.load_weights` applies one of them to a model it loads, after importing torch with its
environment set (`weights._torch`), so this module imports torch only inside its functions."""

from __future__ import annotations

import functools

# torch multiplies fp32 matrices with its BLAS, here Intel's MKL, which on this AMD CPU runs a
# path without AVX-512. oneDNN, which torch also ships, with the weights re-laid out once for
# it, measured 2.3x MKL's speed on the prefill's shapes (383-432 GFLOPS on 2 cores), 1.25-2.8x
# on a 16-row decoding step and 0.8-1.6x on one row (benchmarks/bench_gemm.py; bench_lm.py
# compares whole runs). A rerun gives the same bits. The sums run in another order, so the
# numbers differ from MKL's in the last bits (about 1e-6 relative).
#
# lm.dtype=bf16: this CPU (AMD Zen 4, AVX-512 BF16) multiplies bfloat16 through oneDNN at up to
# twice its fp32 rate (benchmarks/bench_gemm.py, one run: 347-411 against 209-221 GFLOPS on the
# prefill's shapes, 0.9-1.6x on a 16-row decoding step, 0.8-1.2x on one row), and the weights
# are half the bytes to read. A product's output is rounded to bfloat16, so a row's numbers
# depend on the batch it is in (bench_lm --set lm.dtype=bf16: up to 0.2 nats), unlike fp32's.
# Only the decoder's linear layers: each rounds its input and its weights to bfloat16 (8 bits of
# mantissa) and its output goes back to fp32, so the residual stream, the norms, attention and
# the output layer stay fp32. On 64 scoring pairs the likelihoods moved by 0.004 bits per byte
# on average, at most 0.019; with the output layer in bfloat16 too, at most 0.028 (its logits
# rounded to bfloat16 lose the differences the scores are made of).
def bf16_supported() -> bool:
    """Whether oneDNN has bfloat16 kernels on this CPU (AVX-512 BF16, AMX, or AVX-512 emulating them)."""
    import torch
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_linear_layers(model, bf16: bool = False) -> int:
    """Replace the decoder's `nn.Linear` layers by oneDNN ones holding the weights pre-packed,
    in place (the plain weights are freed: one copy stays); with `bf16`, the decoder's weights
    in bfloat16 (lm.dtype=bf16). Inference only: the packed layers have no gradient, so LoRA,
    which trains through them, loads the weights with `blas`. The output layer is packed as
    well, in fp32. Returns how many layers were replaced."""
    import torch
    replaced = 0
    for layer in model.model.layers:
        for name, child in list(layer.named_modules()):
            if type(child) is torch.nn.Linear:
                parent = layer.get_submodule(name.rpartition(".")[0]) if "." in name else layer
                setattr(parent, name.rpartition(".")[2], _packed_linear_class()(child, bf16))
                replaced += 1
    # The output layer too: its weights are the token embeddings', which the embedding's lookup
    # reads, so they stay and the packed copy is 113 MB more. A decoding step's logits for 16
    # rows took 15 ms with BLAS, 3.3 ms packed (1 row: 7.6 and 2.7 ms), a quarter of the step.
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear:
        model.set_output_embeddings(_packed_linear_class()(head))
        replaced += 1
    # The loader maps the safetensors file, and the weights are views of that mapping, which
    # stays whole (and in RSS, once read for packing) while any view lives: the rest (the
    # embeddings, the norms) get memory of their own, so the mapping goes. Measured: RSS after
    # loading 1,230 MiB without this, 932 MiB with it (blas, all weights read: 927 MiB).
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    return replaced


@functools.cache
def _packed_linear_class():
    import torch

    class PackedLinear(torch.nn.Module):
        """y = x W^T + b through oneDNN, with W in the layout oneDNN chose for it (opaque: kept as
        a plain attribute, not a parameter or buffer, so nothing iterates over it). With `bf16`,
        W and b are held in bfloat16, x is rounded to it and y comes back in x's dtype."""

        def __init__(self, linear, bf16: bool = False):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.dtype = torch.bfloat16 if bf16 else linear.weight.dtype
            with torch.no_grad():
                self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().to(self.dtype), None)
            self.bias = None if linear.bias is None else linear.bias.detach().to(self.dtype)

        def forward(self, x):
            if x.dtype == self.dtype:
                return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.packed, self.bias, "none", [], "").to(x.dtype)

        @property
        def weight_bytes(self) -> int:
            return self.in_features * self.out_features * self.dtype.itemsize

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            # the packed weights cannot be saved, and a model saved without them would load as noise
            raise RuntimeError("a model with oneDNN-packed linear layers cannot be saved: load it with lm.gemm=blas")

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN, {self.dtype}"

    return PackedLinear


def quantize_int8(model):
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, which CPU-only torch lacks
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)

"""How the local engine's linear layers multiply: oneDNN with pre-packed fp32 or bfloat16 weights
(lm.gemm=onednn, lm.dtype=bf16), or torch.ao's dynamic int8 quantization (lm.dtype=int8).
`weights.load_weights` applies one of them to a model it loads, after importing torch with its
environment set (`weights._torch`), so this module imports torch only inside its functions."""

from __future__ import annotations

import functools
import itertools

# torch multiplies fp32 matrices with its BLAS, here Intel's MKL, which on an AMD CPU runs a
# path without AVX-512. oneDNN, which torch also ships, with the weights re-laid out once for
# it, measured on an AMD Zen 4 (AVX-512) 2.3x MKL's speed on the prefill's shapes (383-432
# GFLOPS on 2 cores), 1.25-2.8x on a 16-row decoding step and 0.8-1.6x on one row; on a Zen 3
# (AVX2 only) 1.0-1.1x on the prefill's shapes (about 120-140 GFLOPS), 0.7-3.5x on 16 rows, and
# slower than MKL on one row but for the output layer (benchmarks/bench_gemm.py; bench_lm.py
# compares whole runs: 1.15-1.23x on batched generation on the Zen 3). A row's numbers are the same
# bits alone as in a batch, which MKL's are not. The sums run in another order, so the numbers
# differ from MKL's in the last bits (about 1e-6 relative).
#
# lm.dtype=bf16: a CPU with AVX-512 BF16 (AMD Zen 4) multiplies bfloat16 through oneDNN at up to
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


# The projections of a layer that read the same input are multiplied as one product, their weights
# stacked: a small product (a decoding step) pays oneDNN's fixed cost per call, so q, k and v took
# 1.18x less time as one product than as three at 16 rows, 2.7x less at one row, and the same at
# a prompt's hundreds of rows (benchmarks/bench_gemm.py, a Zen 3). Gate and up are not fused:
# 1.05x and 1.28x at 16 rows and one, but 0.80-0.94x from a few hundred rows up, which prompts
# and scoring batches are. Each layer's columns of the product are the bits of its own product:
# oneDNN sums each output over the inputs in the same order whatever the number of outputs
# (tests/test_lm.py checks the engine's answers and likelihoods against the layers packed one
# by one).
FUSED = (("q_proj", "k_proj", "v_proj"),)


def pack_linear_layers(model, bf16: bool = False, fuse: bool = True) -> int:
    """Replace the decoder's `nn.Linear` layers by oneDNN ones holding the weights pre-packed,
    in place (the plain weights are freed: one copy stays); with `bf16`, the decoder's weights
    in bfloat16 (lm.dtype=bf16); with `fuse`, the layers of each `FUSED` group share one product.
    Inference only: the packed layers have no gradient, so LoRA, which trains through them,
    loads the weights with `blas`. The output layer is packed as well, in fp32. Returns how many
    layers were replaced."""
    import torch
    packed_linear, product = _packed_linear_class(), _packed_product_class()
    dtype = torch.bfloat16 if bf16 else torch.float32
    replaced = 0
    for layer in model.model.layers:
        for parent in list(layer.modules()):
            plain = {name: child for name, child in parent.named_children() if type(child) is torch.nn.Linear}
            groups = [group for group in FUSED if fuse and all(name in plain for name in group)]
            groups += [(name,) for name in plain if not any(name in group for group in groups)]
            for group in groups:
                linears = [plain[name] for name in group]
                shared = product(linears, dtype)
                for part, (name, linear) in enumerate(zip(group, linears)):
                    setattr(parent, name, packed_linear(linear, bf16, shared, part))
                    replaced += 1
    # The output layer too: its weights are the token embeddings', which the embedding's lookup
    # reads, so they stay and the packed copy is 113 MB more. A decoding step's logits for 16
    # rows took 15 ms with BLAS, 3.3 ms packed (1 row: 7.6 and 2.7 ms), a quarter of the step.
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear:
        model.set_output_embeddings(packed_linear(head))
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
def _packed_product_class():
    import torch

    class PackedProduct:
        """x W^T + b through oneDNN for one or more linear layers that read the same input, their
        weights stacked and packed once (opaque to torch: a plain attribute). The first of its
        layers called with an input computes all their outputs; each layer takes its own columns,
        and the product is let go once every layer has had its share. In `dtype` (float32 or
        bfloat16: the input is rounded to it and the output goes back to the input's dtype).
        It keeps the last input, so one forward pass at a time: the engine runs one."""

        def __init__(self, linears, dtype):
            self.dtype = dtype
            with torch.no_grad():
                weight = torch.cat([linear.weight.detach() for linear in linears]).to(dtype)
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
                biases = [torch.zeros(m.out_features) if m.bias is None else m.bias.detach() for m in linears]
                self.bias = None if all(m.bias is None for m in linears) else torch.cat(biases).to(dtype)
            ends = list(itertools.accumulate(linear.out_features for linear in linears))
            self.columns = [slice(start, end) for start, end in zip([0, *ends], ends)]
            self._input = self._output = None
            self._left = 0

        def __call__(self, x, part: int):
            if x is not self._input:
                y = torch.ops.mkldnn._linear_pointwise(x if x.dtype == self.dtype else x.to(self.dtype), self.packed, self.bias,
                                                       "none", [], "")
                self._input, self._output, self._left = x, y if y.dtype == x.dtype else y.to(x.dtype), len(self.columns)
            out = self._output if len(self.columns) == 1 else self._output[..., self.columns[part]]
            self._left -= 1
            if not self._left:  # every layer has its share: hold neither the input nor the product
                self._input = self._output = None
            return out

    return PackedProduct


@functools.cache
def _packed_linear_class():
    import torch

    class PackedLinear(torch.nn.Module):
        """A linear layer whose y = x W^T + b is its columns of a `PackedProduct`: its own, or
        one shared with the layers of its `FUSED` group. With `bf16`, W and b are held in
        bfloat16, x is rounded to it and y comes back in x's dtype."""

        def __init__(self, linear, bf16: bool = False, product=None, part: int = 0):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.dtype = torch.bfloat16 if bf16 else linear.weight.dtype
            self.product = product or _packed_product_class()([linear], self.dtype)
            self.part = part

        def forward(self, x):
            return self.product(x, self.part)

        @property
        def weight_bytes(self) -> int:
            return self.in_features * self.out_features * self.dtype.itemsize

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            # the packed weights cannot be saved, and a model saved without them would load as noise
            raise RuntimeError("a model with oneDNN-packed linear layers cannot be saved: load it with lm.gemm=blas")

        def extra_repr(self) -> str:
            shared = len(self.product.columns) > 1
            return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN, {self.dtype}" + (", fused" if shared else "")

    return PackedLinear


def quantize_int8(model):
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, which CPU-only torch lacks
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)

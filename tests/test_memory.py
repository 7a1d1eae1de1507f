"""The engine's memory policy: large freed buffers go back to the system (engine/weights.py)."""

import platform
import subprocess
import sys

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

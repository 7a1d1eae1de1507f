"""The engine's memory policy: large freed buffers go back to the system (engine/weights.py)."""

import platform
import subprocess
import sys

import pytest

from conftest import REPO

# a freed 4 MiB block, after a 16 MiB one was freed (which in glibc's default mode raises the
# mmap threshold to 16 MiB, so the 4 MiB one comes from the heap and stays): RSS freed, in MiB
PROBE = """
import ctypes, ctypes.util, os, sys
from ads_cli.engine.weights import release_large_frees
if sys.argv[1] == "set":
    assert release_large_frees()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
libc.free(libc.malloc(16 << 20))
block = libc.malloc(4 << 20)
ctypes.memset(block, 1, 4 << 20)
before = rss()
libc.free(block)
print((before - rss()) >> 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_large_freed_buffers_go_back_to_the_system():
    def freed(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, check=True, capture_output=True, text=True)
        return int(out.stdout)

    assert freed("default") == 0  # the control: without the setting, the heap keeps the block
    assert freed("set") >= 3

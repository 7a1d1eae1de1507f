"""A whole `ads train` from an empty call cache, with the engine's speed and memory changes off
(the naive way) and on (the default), one after the other in the same run.

    ads prepare && ads index && python benchmarks/bench_train.py [--params params.yaml] [--iter 2] [--sides naive,default]
        [--json PATH] [--keep DIR]

The naive side is the same code with the engine settings that change how a run computes set
back: no prefix KV caches kept between calls (KEPT_PREFIXES = 0), the KV cache concatenated at
every decoding step instead of written into one buffer (GROW_IN_PLACE = False), each batch's
prompts computed as one left-padded batch instead of row by row (ROW_PREFILL = False), glibc's mmap
threshold left to float (no `mallopt`), no `malloc_trim` after a batch, torch's buffers on ordinary pages (HUGE_PAGES = False),
and the linear layers through torch's BLAS (`lm.gemm=blas`). All but the row prefill and the
last leave the numbers as they are; a row computed alone and oneDNN's sums run in another order
than in a padded batch and in BLAS, so their artifacts may differ in the last digits. Each side runs
`ads train --iter N` in a scratch copy of the project (params, prepared data, index) with its own
empty call cache, in a child process, so that its time and peak RSS are its own. Then every
artifact each side wrote is compared byte for byte with the first side's. About 15 minutes per
side on the defaults here. A side `mmap:N` is the default engine with glibc's mmap threshold
fixed at N MiB instead (`mmap:0` leaves glibc's own policy): the trade between speed and peak RSS.
A side `nothp` is the default engine without transparent huge pages (the default until they came);
a side `notrim` is the default engine without `malloc_trim` after a batch (the default until it came);
a side `blas` is the default engine with torch's BLAS (the default until oneDNN came);
a side `batchprefill` is the default engine with each batch's prompts computed as one padded batch
(the default until row-by-row prefill came).
Two more memory policies, measured and not adopted (docs/benchmarks_history.md): `mmapt:N`, the default with glibc's
trim threshold fixed at N MiB too; `trim:N`, glibc's own mmap threshold, and after each batch the
heap's free pages handed back (`malloc_trim`) when the RSS is above N MiB.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the child: set the engine back (or not), then run the CLI as `ads` would
CHILD = """
import ctypes, os, sys
from ads_cli.engine import local, weights
side = sys.argv.pop(1)
if side in ("naive", "nothp"):
    weights.HUGE_PAGES = False
    os.environ.pop("THP_MEM_ALLOC_ENABLE", None)
if side in ("naive", "batchprefill"):
    local.ROW_PREFILL = False
if side == "naive":
    local.KEPT_PREFIXES = 0
    local.GROW_IN_PLACE = False
    weights.release_large_frees = lambda: False
elif side.startswith("mmap:"):
    weights.MMAP_THRESHOLD = int(side[5:]) << 20
    if weights.MMAP_THRESHOLD == 0:
        weights.release_large_frees = lambda: False
elif side.startswith("mmapt:"):  # the default mmap threshold, and glibc's trim threshold fixed at N MiB
    _release = weights.release_large_frees
    def _both(n=int(side[6:])):
        ok = _release()
        ctypes.CDLL(None).mallopt(-1, n << 20)  # M_TRIM_THRESHOLD
        return ok
    weights.release_large_frees = _both
elif side.startswith("trim:"):  # glibc's own mmap threshold; after a batch, malloc_trim(0) when RSS > N MiB
    weights.release_large_frees = lambda: False
    weights.TRIM_ABOVE = int(side[5:]) << 20
if side in ("naive", "notrim"):
    weights.TRIM_ABOVE = 0
from ads_cli.cli import app
sys.argv[0] = "ads"
app()
"""

SIDES = {"naive": "engine settings off: no kept prefixes, KV cache concatenated, prompts prefilled as one padded batch, glibc's own mmap threshold,"
                  " no heap trimming, no huge pages, torch's BLAS",
         "default": "the engine's defaults",
         "nothp": "the engine's defaults without transparent huge pages",
         "notrim": "the engine's defaults without handing the heap's free pages back after a batch",
         "blas": "the engine's defaults with torch's BLAS for the linear layers (lm.gemm=blas)",
         "batchprefill": "the engine's defaults with each batch's prompts computed as one padded batch, not row by row"}
BLAS_SIDES = ("naive", "blas")  # sides whose params say lm.gemm=blas
# what `ads train` writes (logs/ hold the run's timings, which differ by nature)
ARTIFACTS = ("data", "results")
INPUTS = ("data/prepared", "data/index")


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def scratch_project(root: Path, params: Path, into: Path) -> None:
    for rel in INPUTS:
        if not (root / rel).exists():
            fail(f"{root / rel} is missing; run `ads prepare && ads index` first")
        shutil.copytree(root / rel, into / rel)
    shutil.copy(params, into / "params.yaml")
    shutil.copy(root / "sources.lock.json", into / "sources.lock.json")


def run_side(side: str, project: Path, iterations: int) -> dict:
    """`ads train --iter N` in `project`, cold; its wall time, peak RSS (its own, from wait4) and phases."""
    cmd = [sys.executable, "-c", CHILD, side, "train", "--iter", str(iterations),
           "--set", f"lm.call_cache={project / 'calls.sqlite'}"] + (["--set", "lm.gemm=blas"] if side in BLAS_SIDES else [])
    with open(project / "stderr.txt", "w") as err:
        started = time.monotonic()
        child = subprocess.Popen(cmd, cwd=project, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        last = (project / "stderr.txt").read_text().strip().splitlines()[-1:]
        sys.exit(f"error: the {side} side failed (exit {code}): {' '.join(last)}")
    phases = json.loads((project / "logs" / "train.json").read_text()).get("phases", {})
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3), "phases": phases}


def compare(a: Path, b: Path) -> tuple[int, list[str]]:
    """How many artifact files side `a` wrote, and which differ from side `b`'s (or exist on one side only)."""
    def written(root: Path) -> set[Path]:
        return {p.relative_to(root) for rel in ARTIFACTS for p in (root / rel).rglob("*")
                if p.is_file() and not p.relative_to(root).as_posix().startswith(INPUTS)}
    left, right = written(a), written(b)
    differ = sorted(str(p) for p in left ^ right)
    differ += sorted(str(p) for p in left & right if not filecmp.cmp(a / p, b / p, shallow=False))
    return len(left), differ


def side_folder(base: Path, side: str) -> Path:
    return base / side.replace(":", "_")


def describe(side: str) -> str:
    if side.startswith("mmap:") and side[5:].isdigit():
        return f"the engine's defaults, mmap threshold {side[5:]} MiB" if int(side[5:]) else "the engine's defaults, glibc's own mmap threshold"
    if side.startswith("mmapt:") and side[6:].isdigit():
        return f"the engine's defaults, trim threshold {side[6:]} MiB"
    if side.startswith("trim:") and side[5:].isdigit():
        return f"the engine's defaults under glibc's own mmap threshold, malloc_trim after a batch above {side[5:]} MiB RSS"
    if side not in SIDES:
        fail(f"--sides: unknown side {side!r}; use naive, default, nothp, notrim, blas, mmap:N, mmapt:N or trim:N")
    return SIDES[side]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--iter", type=int, default=2, dest="iterations")
    ap.add_argument("--sides", default="naive,default", help="comma-separated, run in this order: naive, default, nothp, notrim, blas, mmap:N, mmapt:N, trim:N")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", type=Path, default=None, help="put the scratch projects here (kept) instead of a temp folder")
    args = ap.parse_args()
    if not args.params.is_file():
        fail(f"--params: {args.params} is not a file")
    names = args.sides.split(",")
    what = {side: describe(side) for side in names}
    root = Path.cwd()
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_train_"))
    sides = {}
    for side in names:
        project = side_folder(base, side)
        if project.exists():
            fail(f"--keep: {project} exists already; name a new folder")
        project.mkdir(parents=True)
        scratch_project(root, args.params, project)
        print(f"{side} ({what[side]}): ads train --iter {args.iterations}, empty call cache ...", flush=True)
        sides[side] = run_side(side, project, args.iterations)
        print(f"  {sides[side]['seconds']:.0f} s, peak RSS {sides[side]['peak_rss_gib']:.2f} GiB", flush=True)
    first = names[0]
    for side in names[1:]:
        n_files, sides[side]["differing_files"] = compare(side_folder(base, side), side_folder(base, first))
        sides[side][f"{first}_vs_this"] = round(sides[first]["seconds"] / sides[side]["seconds"], 3)
        print(f"\nartifacts of {side} against {first}: {n_files - len(sides[side]['differing_files'])} of {n_files} files"
              f" byte-identical" + (f"; differ: {sides[side]['differing_files']}" if sides[side]["differing_files"] else ""))
    if args.json:
        args.json.write_text(json.dumps({"sides": sides, "descriptions": what}, indent=1) + "\n")
    phases = sorted({p for s in sides.values() for p in s["phases"]}, key=lambda p: -sides[names[-1]]["phases"].get(p, 0))
    print(f"\n| `ads train --iter {args.iterations}`, cold | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 1) + "|")
    print("| total | " + " | ".join(f"{sides[n]['seconds']:.0f} s" for n in names) + " |")
    for phase in phases:
        print(f"| {phase} | " + " | ".join(f"{sides[n]['phases'].get(phase, 0):.0f} s" for n in names) + " |")
    print("| peak RSS | " + " | ".join(f"{sides[n]['peak_rss_gib']:.2f} GiB" for n in names) + " |")
    print(f"| {first}'s time / this | " + " | ".join(f"{sides[first]['seconds'] / sides[n]['seconds']:.2f}x" for n in names) + " |")
    if args.keep is None:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()

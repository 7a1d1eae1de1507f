"""benchmarks/: bench_train.py refuses bad input before any run (one line, exit code 2); every script compiles."""

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize("args, fragment", [
    (["--sides", "naive,fast"], "--sides: unknown side 'fast'"),
    (["--sides", "naive,trim:lots"], "--sides: unknown side 'trim:lots'"),
    (["--params", "no-such.yaml"], "--params: no-such.yaml is not a file"),
    (["--keep", "{keep}"], "exists already"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, fragment):
    (tmp_path / "naive").mkdir()  # a --keep folder whose first side's folder is taken
    args = [a.format(keep=tmp_path) for a in args]
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train.py"), *args], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and fragment in out.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("*.py")))
def test_every_benchmark_compiles(script, tmp_path):
    """A benchmark runs for minutes before it reaches its last lines: a syntax error anywhere in
    it should fail here, not at the end of a run."""
    import py_compile

    py_compile.compile(str(REPO / "benchmarks" / script), cfile=str(tmp_path / "out.pyc"), doraise=True)

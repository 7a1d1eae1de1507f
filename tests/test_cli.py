"""The CLI through Typer's runner: what a user types, what they see, the exit codes."""

import orjson
from typer.testing import CliRunner

from ads_cli import __version__
from ads_cli.cli import app
from conftest import one_line_error

runner = CliRunner()


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("prepare", "index", "sample", "execute", "train", "evaluate", "search", "generate"):
        assert command in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"ads {__version__}"


def test_prepare_index_search_on_user_files(project, user_files):
    docs, tasks = user_files
    result = runner.invoke(app, ["prepare", "--docs", str(docs), "--tasks", str(tasks), "--set", "prepare.n_test=2"])
    assert result.exit_code == 0, result.output
    assert "15 docs" in result.output
    assert (project.logs / "prepare.log").exists()
    result = runner.invoke(app, ["index"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["search", "capital of Kenya", "-k", "2"])
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(l) for l in result.stdout.splitlines()]
    assert len(lines) == 2 and lines[0]["title"] == "Kenya"


def test_bad_input_is_one_line_exit_2(project, user_files):
    docs, tasks = user_files
    one_line_error(runner.invoke(app, ["prepare", "--set", "prepare.bogus=1"]), "unknown params key prepare.bogus")
    one_line_error(runner.invoke(app, ["prepare", "--params", "nope.yaml"]), "params file not found")
    (project.root / "bad.jsonl").write_bytes(b'{"task": "a", "input": "q", "reference": "r"}\n{oops\n')
    one_line_error(runner.invoke(app, ["prepare", "--docs", str(docs), "--tasks", "bad.jsonl"]), "bad.jsonl:2: malformed JSON")
    (project.root / "empty.jsonl").write_bytes(b"")
    one_line_error(runner.invoke(app, ["prepare", "--docs", str(docs), "--tasks", "empty.jsonl"]), "task file is empty")
    one_line_error(runner.invoke(app, ["prepare", "--docs", "missing.jsonl", "--tasks", str(tasks)]), "does not exist")
    one_line_error(runner.invoke(app, ["search", "anything"]), "run `ads index` first")
    one_line_error(runner.invoke(app, ["index"]), "run `ads prepare` first")

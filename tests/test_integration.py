"""End to end on the real pinned sources (fetched once with pip into ~/.cache/ads, then cached)."""

import pytest
from typer.testing import CliRunner

from ads_cli import params as params_mod
from ads_cli.method.tasks import input_text, references
from ads_cli.stages import prepare
from ads_cli.cli import app
from ads_cli.jsonl import read_jsonl
from ads_cli.paths import Paths
from conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.model]
runner = CliRunner()


def test_real_defaults_prepare_index_search(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.tiny.yaml").read_text())
    (tmp_path / "sources.lock.json").write_text((REPO / "sources.lock.json").read_text())
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 0, result.output
    paths = Paths(tmp_path)
    docs = read_jsonl(paths.docs)
    assert len(docs) == 10_033
    assert set(docs[0]) == {"id", "title", "text", "description", "topic"}
    train, test = read_jsonl(paths.tasks_train), read_jsonl(paths.tasks_test)
    assert len(train) == 3 and len(test) == 2
    assert {t["metric"] for t in train + test} <= set(params_mod.METRICS)
    # the committed lock was checked, not rewritten
    assert (tmp_path / "sources.lock.json").read_text() == (REPO / "sources.lock.json").read_text()

    assert runner.invoke(app, ["index"]).exit_code == 0
    result = runner.invoke(app, ["search", "1968 science fiction film by Stanley Kubrick", "-k", "1"])
    assert '"title":"2001: A Space Odyssey"' in result.stdout
    # the 10k-document index is a function of the docs: a second build writes the same bytes
    first = {p.relative_to(paths.index): p.read_bytes() for p in paths.index.rglob("*") if p.is_file()}
    assert runner.invoke(app, ["index"]).exit_code == 0
    assert {p.relative_to(paths.index): p.read_bytes() for p in paths.index.rglob("*") if p.is_file()} == first


def test_real_registry_tasks_are_english_and_short(tmp_path):
    params = params_mod.load(REPO / "params.yaml")
    paths = Paths(tmp_path)
    (tmp_path / "sources.lock.json").write_text((REPO / "sources.lock.json").read_text())
    manifest = prepare.run(params, paths)
    assert manifest["counts"]["tasks_kept"] >= 100
    assert manifest["counts"]["skipped"]["not_reference_scored"] > 0
    for task in read_jsonl(paths.tasks_train) + read_jsonl(paths.tasks_test):
        for example in task["observed"] + task["heldout"]:
            assert len(input_text(example["input"])) <= 600
            assert all(len(r) <= 40 for r in references(example["reference"]))

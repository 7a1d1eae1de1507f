import orjson
import pytest

from ads_cli import params as params_mod
from ads_cli.stages import prepare
from ads_cli.errors import AdsError
from ads_cli.jsonl import read_json, read_jsonl
from conftest import make_flat_tasks, write_jsonl


def _params(project, **prepare_overrides):
    p = params_mod.load(project.root / "params.yaml")
    p["prepare"].update(prepare_overrides)
    return p


def test_user_files_split_is_disjoint_and_deterministic(project, user_files):
    docs, tasks = map(str, user_files)
    params = _params(project, n_test=2, n_train=0, observed=2, heldout=3)
    m1 = prepare.run(params, project, docs_source=docs, tasks_source=tasks)
    first = [project.tasks_train.read_bytes(), project.tasks_test.read_bytes(), project.docs.read_bytes()]
    prepare.run(params, project, docs_source=docs, tasks_source=tasks)
    assert [project.tasks_train.read_bytes(), project.tasks_test.read_bytes(), project.docs.read_bytes()] == first

    train, test = read_jsonl(project.tasks_train), read_jsonl(project.tasks_test)
    assert len(test) == 2 and len(train) == 4
    assert not {t["id"] for t in train} & {t["id"] for t in test}
    for task in train + test:
        assert len(task["observed"]) == 2 and len(task["heldout"]) == 3
        observed = {orjson.dumps(e) for e in task["observed"]}
        assert not observed & {orjson.dumps(e) for e in task["heldout"]}
        assert task["metric"] == "contains"
    assert m1["counts"]["docs"] == 15 and m1["counts"]["tasks_kept"] == 6
    assert read_json(project.prepared / "manifest.json")["inputs"]["tasks"]["sha256"] == m1["inputs"]["tasks"]["sha256"]


def test_another_seed_gives_another_split(project, user_files):
    docs, tasks = map(str, user_files)
    prepare.run(_params(project, seed=0), project, docs_source=docs, tasks_source=tasks)
    a = read_jsonl(project.tasks_train)
    prepare.run(_params(project, seed=1), project, docs_source=docs, tasks_source=tasks)
    b = read_jsonl(project.tasks_train)
    assert a != b


def test_filters_drop_long_foreign_and_small(project):
    records = make_flat_tasks(n_tasks=3, n_examples=6)
    records += [{"task": "task0", "input": "x" * 700, "reference": "Paris"}]            # input too long
    records += [{"task": "task1", "input": "What is it?", "reference": "y" * 50}]       # reference too long
    records += [{"task": "task2", "input": "東京の首都はどこですか", "reference": "東京"}]  # not ASCII
    records += [{"task": "tiny", "input": "What?", "reference": "a"}]                    # too few examples
    german = "Der wirtschaftliche Gewinn kann positiv sein wenn die alternative Verwendung nicht besser ist"
    records += [{"task": "german", "input": f"{german} {i}", "reference": "B"} for i in range(6)]
    path = write_jsonl(project.root / "t.jsonl", records)
    docs = write_jsonl(project.root / "d.jsonl", [{"title": "A", "text": "alpha"}])
    m = prepare.run(_params(project, min_samples=6, n_test=1, n_train=0), project, docs_source=str(docs), tasks_source=str(path))
    kept = {t["id"] for t in read_jsonl(project.tasks_train) + read_jsonl(project.tasks_test)}
    assert kept == {"task0", "task1", "task2"}
    assert m["counts"]["skipped"] == {"not_english": 1, "too_few_samples": 1}
    for task in read_jsonl(project.tasks_train) + read_jsonl(project.tasks_test):
        assert task["n_examples"] == 6


def _registry(root):
    """A small evals-style registry folder: specs in evals/, samples in data/."""
    reg = root / "registry"
    (reg / "evals").mkdir(parents=True)
    samples = [{"input": [{"role": "system", "content": "Answer briefly."},
                          {"role": "user", "content": f"What is the capital of the country number {i} in the list?"}],
                "ideal": ["Paris", "paris"]} for i in range(8)]
    write_jsonl(reg / "data/matched/samples.jsonl", samples)
    write_jsonl(reg / "data/included/samples.jsonl", samples)
    write_jsonl(reg / "data/graded/samples.jsonl", samples)
    write_jsonl(reg / "data/nospec/samples.jsonl", samples)
    write_jsonl(reg / "data/nospec/fewshot.jsonl", samples)
    (reg / "data/lfs/samples.jsonl").parent.mkdir(parents=True)
    (reg / "data/lfs/samples.jsonl").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 10\n")
    (reg / "data/broken/samples.jsonl").parent.mkdir(parents=True)
    (reg / "data/broken/samples.jsonl").write_text('{"input": "x", "ideal": \n')
    for name, cls in [("matched", "evals.elsuite.basic.match:Match"), ("included", "evals.elsuite.basic.includes:Includes"),
                      ("graded", "evals.elsuite.modelgraded.classify:ModelBasedClassify")]:
        (reg / f"evals/{name}.yaml").write_text(
            f"{name}:\n  id: {name}.dev.v0\n  description: Capitals quiz\n{name}.dev.v0:\n  class: {cls}\n"
            f"  args:\n    samples_jsonl: {name}/samples.jsonl\n")
    return reg


def test_registry_metric_from_spec_and_skips_counted(project):
    reg = _registry(project.root)
    docs = write_jsonl(project.root / "d.jsonl", [{"title": "A", "text": "alpha"}])
    m = prepare.run(_params(project, min_samples=8, n_test=1, n_train=0, default_metric="f1"), project,
                    docs_source=str(docs), tasks_source=str(reg))
    tasks = {t["id"]: t for t in read_jsonl(project.tasks_train) + read_jsonl(project.tasks_test)}
    assert {k: t["metric"] for k, t in tasks.items()} == {"matched/samples": "exact", "included/samples": "contains", "nospec/samples": "f1"}
    assert tasks["matched/samples"]["category"] == "knowledge"
    assert m["counts"]["skipped"] == {"git_lfs_pointer": 1, "malformed_file": 1, "not_reference_scored": 1, "few_shot_file": 1}


@pytest.mark.parametrize("content, fragment", [
    (b"", "task file is empty"),
    (b'{"task": "a", "input": "q"}\n', "record 1: missing field 'reference'"),
    (b'{"task": "a", "input": "q", "reference": "r", "metric": "bleu"}\n', "unknown metric 'bleu'"),
    (b'{"task": "a", "input": "q", "reference": "r"}\n{"task": \n', "t.jsonl:2: malformed JSON"),
])
def test_bad_task_files(project, content, fragment):
    (project.root / "t.jsonl").write_bytes(content)
    docs = write_jsonl(project.root / "d.jsonl", [{"title": "A", "text": "alpha"}])
    with pytest.raises(AdsError) as e:
        prepare.run(_params(project), project, docs_source=str(docs), tasks_source=str(project.root / "t.jsonl"))
    assert fragment in str(e.value)
    assert not project.prepared.exists()  # nothing half-written


def test_docs_need_title_and_text(project, user_files):
    bad = write_jsonl(project.root / "bad_docs.jsonl", [{"title": "A"}])
    with pytest.raises(AdsError, match="record 1: missing field 'text'"):
        prepare.run(_params(project), project, docs_source=str(bad), tasks_source=str(user_files[1]))


def test_split_is_stratified_by_category():
    tasks = [{"id": f"{cat}{i}", "category": cat} for cat in ("math", "knowledge") for i in range(10)]
    tasks += [{"id": f"code{i}", "category": "code"} for i in range(20)]
    for seed in range(5):
        train, test = prepare.split_tasks(tasks, seed, n_test=8, n_train=16)
        count = lambda ts, cat: sum(t["category"] == cat for t in ts)
        assert (count(test, "code"), count(test, "math"), count(test, "knowledge")) == (4, 2, 2)
        assert (count(train, "code"), count(train, "math"), count(train, "knowledge")) == (8, 4, 4)
        assert not {t["id"] for t in train} & {t["id"] for t in test}
        # test from the lowest ranks, train from the highest: growing one leaves the other as it was
        assert prepare.split_tasks(tasks, seed, n_test=20, n_train=16)[0] == train
        assert prepare.split_tasks(tasks, seed, n_test=8, n_train=30)[1] == test
        assert len(prepare.split_tasks(tasks, seed, n_test=30, n_train=16)[0]) == 10  # they meet: train gets the rest


def test_categorize():
    assert prepare.categorize("arithmetic-expression") == "math"
    assert prepare.categorize("sql-queries") == "code"
    assert prepare.categorize("capital-cities", "") == "knowledge"
    assert prepare.categorize("zzz") == "other"

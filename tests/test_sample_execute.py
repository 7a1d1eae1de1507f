"""`ads sample` and `ads execute` on the tiny configuration with small hand-made data."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import orjson
import pytest
from typer.testing import CliRunner

from ads_cli import apis as apis_mod
from ads_cli import params as params_mod
from ads_cli.method import calls
from ads_cli.stages import execute
from ads_cli.apis import APIResult
from ads_cli.cli import app
from ads_cli.jsonl import read_json, read_jsonl
from conftest import one_line_error, write_jsonl

runner = CliRunner()


@pytest.fixture
def prepared(project, user_files):
    docs, tasks = user_files
    assert runner.invoke(app, ["prepare", "--docs", str(docs), "--tasks", str(tasks)]).exit_code == 0
    assert runner.invoke(app, ["index"]).exit_code == 0
    return project


def _trajectories(project, records):
    return write_jsonl(project.trajectories(1), [
        {"task_id": "task0", "trajectory_id": f"task0#1.{j}", "iteration": 1, "calls": calls, "raw": ""}
        for j, calls in enumerate(records)
    ])


def test_sample_writes_parsed_trajectories_for_every_task(prepared):
    result = runner.invoke(app, ["sample"])
    assert result.exit_code == 0, result.output
    params = params_mod.load("params.yaml")
    trajectories = read_jsonl(prepared.trajectories(1))
    tasks = read_jsonl(prepared.tasks_train)
    n, singles = params["sample"]["n_trajectories"], params["sample"]["single_calls"]
    assert singles, "the test needs single calls beside the optimizer's trajectories"
    own = [t for t in trajectories if t["source"] == "optimizer"]
    assert len(own) == len(tasks) * n
    assert {t["task_id"] for t in own} == {t["id"] for t in tasks}
    for t in own:
        assert ("parse_error" in t) == (t["calls"] == [] and t["raw"].strip().lower() != "none")
        assert len(t["calls"]) <= params["sample"]["max_calls"]
    # beside them, each API of sample.single_calls once per task, on its first observed question
    by_task = {t["id"]: t for t in tasks}
    single = sorted((t["task_id"], t["calls"][0]["api"], t["calls"][0]["arg"], len(t["calls"]))
                    for t in trajectories if t["source"] == "single_call")
    assert single == sorted((task["id"], api, by_task[task["id"]]["observed"][0]["input"][:200], 1)
                            for task in tasks for api in singles)
    assert len(trajectories) == len(own) + len(single)
    manifest = read_json(prepared.iteration(1) / "sample_manifest.json")
    parsed = sum("parse_error" not in t for t in own)
    assert manifest["counts"]["parse_rate"] == round(parsed / len(own), 4)
    assert manifest["counts"]["single_calls"] == len(single)
    # same params and seed: same bytes (the second run is served by the call cache)
    first = prepared.trajectories(1).read_bytes()
    assert runner.invoke(app, ["sample"]).exit_code == 0
    assert prepared.trajectories(1).read_bytes() == first


def test_execute_dedupes_records_provenance_and_survives_a_raising_api(prepared, monkeypatch):
    class Explode:
        name, description = "explode", "explode: <x> -- always fails"

        def __init__(self, ctx):
            pass

        def __call__(self, arg):
            raise RuntimeError("boom")

    monkeypatch.setitem(apis_mod.BUILTIN, "explode", Explode)
    _trajectories(prepared, [
        [{"api": "retrieve", "arg": "capital city Kenya"}, {"api": "explode", "arg": "x"}],
        [{"api": "retrieve", "arg": "capital city Kenya"}],
        [],
    ])
    params = params_mod.load("params.yaml")
    manifest = execute.run(params, prepared)
    assert manifest["run"]["resumed_calls"] == 0
    assert manifest["counts"] == {"trajectories": 3, "calls": 3, "unique_calls": 2,
                                  "failed_calls": 1, "items": {"passage": 2 * params["index"]["top_k"]}}
    ex = read_jsonl(prepared.executions(1))
    assert ex[0]["items"][0]["title"] == "Kenya"
    assert ex[0]["items"][0]["source"] == {"api": "retrieve", "arg": "capital city Kenya"} and ex[0]["items"][0]["call"] == 0
    assert ex[0]["errors"] == [{"call": 1, "api": "explode", "arg": "x", "error": "RuntimeError: boom"}]
    assert ex[0]["cost"] == ex[1]["cost"] == params["apis"]["retrieval_price"]
    assert ex[2] == {"trajectory_id": "task0#1.2", "task_id": "task0", "items": [], "cost": 0.0, "errors": []}


def test_demonstrate_and_answer_items(prepared):
    _trajectories(prepared, [[{"api": "demonstrate", "arg": "capital cities"}, {"api": "answer", "arg": "What is the capital of Kenya?"}]])
    execute.run(params_mod.load("params.yaml"), prepared)
    (ex,) = read_jsonl(prepared.executions(1))
    kinds = [i["kind"] for i in ex["items"]]
    assert "qa" in kinds
    qa = next(i for i in ex["items"] if i["kind"] == "qa")
    assert qa["question"] == "What is the capital of Kenya?" and qa["answer"] and qa["sources"]
    assert ex["cost"] > params_mod.load("params.yaml")["apis"]["retrieval_price"]  # tokens were counted too
    for item in ex["items"]:
        if item["kind"] == "demonstration":
            assert item["instruction"] and item["response"]


def test_sigkill_midway_then_rerun_gives_identical_executions(prepared, tmp_path):
    calls = [[{"api": "answer", "arg": f"What is the capital of country number {i}?"}] for i in range(8)]
    _trajectories(prepared, calls)
    env = dict(os.environ, ADS_FAKE_DELAY="0.15")  # slow enough for the kill to land midway
    code = "from ads_cli.cli import app; app()"
    cmd = [sys.executable, "-c", code, "execute", "--no-cache", "--set", "execute.journal_every=1"]
    proc = subprocess.Popen(cmd, cwd=prepared.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = prepared.iteration(1) / "execute.journal.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 3:  # the header and two calls
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    calls_at_kill = journal.read_bytes().count(b"\n") - 1
    assert 2 <= calls_at_kill < 8, "the kill did not land midway"
    assert not prepared.executions(1).exists()

    result = subprocess.run(cmd, cwd=prepared.root, capture_output=True, text=True)  # the rerun at full speed
    assert result.returncode == 0, result.stderr
    resumed = read_json(prepared.root / "logs/execute.json")["resumed_calls"]
    assert resumed >= 2
    assert journal.read_bytes().count(b"\n") == 1 + 8  # the header, then each call once: nothing ran twice
    killed_run = prepared.executions(1).read_bytes()

    journal.unlink()
    result = subprocess.run(cmd, cwd=prepared.root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert prepared.executions(1).read_bytes() == killed_run


def test_torn_journal_line_is_cut_off(tmp_path):
    path = tmp_path / "j.jsonl"
    good = orjson.dumps(APIResult("retrieve", "a").as_dict()) + b"\n"
    header = b'{"journal": "k1"}\n'
    path.write_bytes(header + good + b'{"api": "retrieve", "ar')
    done, intact = calls.read_journal(path, "k1")
    assert list(done) == ["retrieve\x00a"] and intact == len(header + good)
    assert calls.read_journal(path, "other settings") == ({}, 0)


def test_bad_inputs(prepared):
    one_line_error(runner.invoke(app, ["execute", "--iter", "3"]), "run `ads sample --iter 3` first")
    prepared.trajectories(1).parent.mkdir(parents=True, exist_ok=True)
    prepared.trajectories(1).write_bytes(b'{"task_id": "a", "trajectory_id": "a#1.0", "calls": []}\n{"task_id": 1}\n')
    one_line_error(runner.invoke(app, ["execute"]), "trajectories.jsonl:2: field 'task_id' must be a string")
    prepared.trajectories(1).write_bytes(b'{"task_id": "a", "trajectory_id": "a#1.0", "calls": [{"api": "retrieve"}]}\n')
    one_line_error(runner.invoke(app, ["execute"]), "trajectories.jsonl:1: each call must be")
    prepared.tasks_train.write_bytes(b"")
    one_line_error(runner.invoke(app, ["sample"]), "zero tasks")
    import shutil

    shutil.rmtree(prepared.index)
    _trajectories(prepared, [[{"api": "retrieve", "arg": "Kenya"}]])
    one_line_error(runner.invoke(app, ["execute"]), "run `ads index` first")


def test_third_party_api_is_picked_up_from_entry_points(tmp_path, monkeypatch, prepared):
    plugin = tmp_path / "plugin"
    (plugin / "my_api.py").parent.mkdir(parents=True)
    (plugin / "my_api.py").write_text(textwrap.dedent('''
        from ads_cli.apis import APIResult

        class Shout:
            name = "shout"
            description = "shout: <text> -- the text in capitals"
            def __init__(self, ctx):
                self.ctx = ctx
            def __call__(self, arg):
                return APIResult(self.name, arg, [{"kind": "passage", "title": "shout", "text": arg.upper()}], cost=1.0)

        def make(ctx):
            return Shout(ctx)
    '''))
    dist = plugin / "my_api-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-api\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ads.apis]\nshout = my_api:make\n")
    monkeypatch.syspath_prepend(str(plugin))
    ctx = apis_mod.APIContext(params_mod.load("params.yaml"), lambda: None, lambda: None)
    registry = apis_mod.registry(ctx)
    assert set(registry) == {"retrieve", "demonstrate", "answer", "shout"}
    assert registry["shout"]("hi").items[0]["text"] == "HI"
    _trajectories(prepared, [[{"api": "shout", "arg": "hello"}]])
    execute.run(params_mod.load("params.yaml"), prepared)
    assert read_jsonl(prepared.executions(1))[0]["items"][0]["text"] == "HELLO"

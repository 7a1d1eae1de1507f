"""`backend: openai` against a real OpenAI-compatible server: llama-cpp-python serving the
packaged SmolLM2 GGUF on 127.0.0.1, started by the tests.

Marker `server`: run with `pip install -e '.[test,server]' && pytest -q -m server` (README,
"Serving the models"). Failures are injected by a small proxy between ads and the real server.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from typer.testing import CliRunner

from ads_cli.engine.roles import load_role
from ads_cli import params as params_mod
from ads_cli.stages import serve
from ads_cli.cli import app
from ads_cli.errors import AdsError
from ads_cli.jsonl import read_json, read_jsonl
from ads_cli.engine.grammar import LineGrammar
from ads_cli.method.optimizer import parse_trajectory
from ads_cli.paths import Paths
from conftest import REPO, make_docs, make_flat_tasks, one_line_error, write_jsonl

pytestmark = pytest.mark.server
pytest.importorskip("llama_cpp", reason="needs the server extra: pip install -e '.[test,server]'")

# llama-cpp-python's sampling defaults differ from the local engine's (plain softmax)
LOCAL_SAMPLING = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}
runner = CliRunner()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    params = params_mod.load(REPO / "params.tiny.yaml")
    gguf = serve.gguf_path(params, "policy", Paths(REPO))
    log = tmp_path_factory.mktemp("server") / "server.log"
    process, base_url = serve.start(gguf, "smollm2-135m-instruct", log_file=log)
    yield base_url
    process.terminate()
    process.wait(timeout=30)


class Proxy:
    """Forwards to the real server. `garble(body)` picks requests to answer with garbage; after
    `down_after` forwarded requests every connection is dropped without an answer."""

    def __init__(self, target: str):
        self.target, self.garble, self.forwarded = target, None, 0
        self.down_after: int | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if proxy.down_after is not None and proxy.forwarded >= proxy.down_after:
                    self.close_connection = True
                    return  # no response at all: the client sees the connection drop
                if proxy.garble is not None and proxy.garble(orjson.loads(body)):
                    data, status = b"\x00 not json", 200
                else:
                    upstream = httpx.post(proxy.target + self.path.removeprefix("/v1"), content=body,
                                          headers={"Content-Type": "application/json"}, timeout=120)
                    data, status = upstream.content, upstream.status_code
                    proxy.forwarded += 1
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()  # shutdown() waits one poll

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def cached_answers(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM calls").fetchone()[0]


def served_params(base_url: str, **extra) -> list[str]:
    sets = []
    for role in ("policy", "optimizer"):
        sets += [f"lm.{role}_backend=openai", f"openai_{role}.base_url={base_url}", f"openai_{role}.max_retries=1",
                 f"openai_{role}.backoff=0.05", f"openai_{role}.extra_body={orjson.dumps(LOCAL_SAMPLING).decode()}"]
    # llama-cpp-python's prompt logprobs are shifted by one token: the metric lens only
    sets += ["openai_optimizer.grammar=true", "train.reward=metric", "evaluate.likelihood=false"]
    return sets + [f"{k}={v}" for k, v in extra.items()]


def test_chat_generation_counts_tokens_like_the_local_tokenizer(llama_server, tmp_path):
    params = params_mod.load(REPO / "params.tiny.yaml", served_params(llama_server, **{"lm.call_cache": str(tmp_path / "c.sqlite")}))
    model = load_role(params, "policy", Paths(tmp_path))
    g = model.generate(["What is the capital of France?"], max_new_tokens=12)[0]
    assert g.error is None and g.text and 0 < g.completion_tokens <= 12
    # the server applies the GGUF's chat template: the same prompt, token for token, as the local engine
    local = load_role(params_mod.load(REPO / "params.tiny.yaml"), "policy", Paths(tmp_path))
    assert g.prompt_tokens == local.count_tokens(local.render("What is the capital of France?"))
    assert model.generate(["What is the capital of France?"], max_new_tokens=12)[0].cached


def test_seeded_sampling_repeats_and_the_grammar_holds(llama_server, tmp_path):
    params = params_mod.load(REPO / "params.tiny.yaml", served_params(llama_server, **{"lm.cache": "false"}))
    model = load_role(params, "optimizer", Paths(tmp_path))
    grammar = LineGrammar(["retrieve:", "answer:", "end"], first_line_options=["retrieve:", "answer:", "none"], terminal=["none", "end"])
    prompt = "Task: capitals of countries. Write one call per line, then end.\n"
    runs = [model.generate([prompt] * 2, max_new_tokens=24, temperature=0.8, seed=s, chat=False, grammar=grammar)
            for s in (1, 1, 2)]
    texts = [[g.text for g in run] for run in runs]
    assert texts[0] == texts[1]  # same seed, same text
    assert texts[0] != texts[2] or texts[0][0] != texts[0][1]  # seeds matter
    for g in runs[0] + runs[2]:
        for line in g.text.split("\n"):
            assert line.split(":")[0] + (":" if ":" in line else "") in ("retrieve:", "answer:", "none", "end", ""), g.text
        assert parse_trajectory(g.text, {"retrieve", "answer"}, 3)[1] is None or g.completion_tokens == 24


def test_a_stage_needing_likelihoods_stops_before_any_work_on_llama_cpp(llama_server, tmp_path, monkeypatch):
    small_project(tmp_path, monkeypatch)
    sets = [x for s in served_params(llama_server, **{"train.reward": "likelihood"}) for x in ("--set", s)]
    result = runner.invoke(app, ["train", "--iter", "1", *sets])
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "shifted by one token" in lines[0] and "Set lm.policy_backend=local" in lines[0]
    assert not (tmp_path / "data" / "iter_1" / "trajectories.jsonl").exists()  # no work was done


def test_llama_cpp_prompt_logprobs_are_refused_with_the_reason(llama_server, tmp_path):
    params = params_mod.load(REPO / "params.tiny.yaml", served_params(llama_server, **{"lm.cache": "false"}))
    model = load_role(params, "policy", Paths(tmp_path))
    with pytest.raises(AdsError, match="shifted by one token"):
        model.loglikelihood([("The capital of France is", " Paris")])


def small_project(root, monkeypatch) -> Paths:
    """Prepared and indexed from the small test files, with its own call cache."""
    root.mkdir(exist_ok=True)
    monkeypatch.chdir(root)
    params = params_mod.load(REPO / "params.tiny.yaml")
    params["lm"]["call_cache"] = str(root / "calls.sqlite")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    write_jsonl(root / "docs.jsonl", make_docs())
    write_jsonl(root / "tasks.jsonl", make_flat_tasks(hard=True))
    for args in (["prepare", "--docs", "docs.jsonl", "--tasks", "tasks.jsonl"], ["index"]):
        assert runner.invoke(app, args).exit_code == 0
    return Paths(root)


def test_a_rerun_from_the_call_cache_gives_the_same_artifacts_without_the_server(llama_server, tmp_path, monkeypatch):
    """Bit-for-bit repeats are the server's business (llama-cpp-python's answers depend a little on
    the request before: README); the call cache makes a rerun exact and sends nothing."""
    proxy = Proxy(llama_server)
    try:
        sets = [x for s in served_params(proxy.url) for x in ("--set", s)]
        outputs = []
        for run in ("a", "b"):
            paths = small_project(tmp_path / run, monkeypatch)
            result = runner.invoke(app, ["train", "--iter", "1", *sets, "--set", f"lm.call_cache={tmp_path / 'shared.sqlite'}"])
            assert result.exit_code == 0, result.output
            outputs.append([paths.trajectories(1).read_bytes(), paths.executions(1).read_bytes(),
                            (paths.iteration(1) / "rewards.jsonl").read_bytes()])
            if run == "a":
                asked = proxy.forwarded
        assert asked > 0 and proxy.forwarded == asked  # the second run asked the server nothing
        assert outputs[0] == outputs[1]
        assert any(t["calls"] for t in read_jsonl(paths.trajectories(1)))  # the optimizer asked for data
    finally:
        proxy.close()


def test_pipeline_on_the_server_survives_garbage_and_an_outage(llama_server, tmp_path, monkeypatch):
    small_project(tmp_path, monkeypatch)
    proxy = Proxy(llama_server)
    try:
        sets = [x for s in served_params(proxy.url, **{"train.min_reward": -1}) for x in ("--set", s)]
        # every attempt at one optimizer request (a prompt and its seed) comes back as garbage
        garbled: list[tuple] = []

        def one_trajectory(body: dict) -> bool:
            key = (body.get("prompt"), body.get("seed"))
            if key[0] is None:
                return False
            if not garbled:
                garbled.append(key)
            return key == garbled[0]

        proxy.garble = one_trajectory
        result = runner.invoke(app, ["train", "--iter", "1", *sets])
        assert result.exit_code == 0, result.output
        trajectories = read_jsonl(Paths(tmp_path).trajectories(1))
        failed = [t for t in trajectories if "generation failed" in t.get("parse_error", "")]
        assert len(failed) == 1 and "unreadable answer" in failed[0]["parse_error"], failed
        assert sum("parse_error" not in t for t in trajectories) >= len(trajectories) // 2
        proxy.garble = None

        # the server goes away after 6 answers in evaluate: one line, exit 2, and the rerun goes on from them
        start = proxy.forwarded
        proxy.down_after = start + 6
        cached_before = cached_answers(tmp_path / "calls.sqlite")
        result = runner.invoke(app, ["evaluate", *sets])
        assert "run again" in one_line_error(result, "cannot reach")
        answered = proxy.forwarded - start  # 6, plus those already in flight when the server went away
        assert answered >= 6 and cached_answers(tmp_path / "calls.sqlite") - cached_before == answered  # all kept
        proxy.down_after = None
        result = runner.invoke(app, ["evaluate", *sets])
        assert result.exit_code == 0, result.output
        run = read_json(tmp_path / "logs" / "evaluate.json")
        assert run["cache"]["policy"]["hits"] + run["cache"]["apis"]["hits"] > 0, run
        assert (tmp_path / "results" / "report.md").exists()
    finally:
        proxy.close()


def _processes_with(fragment: str) -> list[int]:
    """Pids whose command line contains `fragment` (arguments joined by spaces)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and fragment in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
def test_ads_serve_serves_the_packaged_model_and_leaves_nothing_when_stopped(tmp_path, stop):
    port = serve.free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:  # the server logs a lot: a pipe nobody reads would fill up and stall it
        # as a terminal would start it: a test run under `nohup` ignores SIGHUP, and a child inherits
        # that (`ads serve` keeps it, so that `nohup ads serve` survives the terminal's hangup)
        process = subprocess.Popen([sys.executable, "-m", "ads_cli.cli", "serve", "--port", str(port), "--params",
                                    str(REPO / "params.tiny.yaml")], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        serve.wait_ready(f"http://127.0.0.1:{port}/v1", process)
        assert "as 'smollm2-135m-instruct' at" in log.read_text(errors="replace")
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]
        assert _processes_with(f"--port {port} ") == [process.pid]  # the server is ads serve itself, no child
    finally:
        process.send_signal(stop)
        process.wait(timeout=30)
    assert _processes_with(f"--port {port} ") == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2.0)

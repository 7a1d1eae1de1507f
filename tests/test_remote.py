"""The server backend's HTTP behaviour, against a small scripted HTTP server the tests run.

The scripted server answers in OpenAI's format but is no model: each test scripts what it
returns (429s, 500s, garbage, slowness) to check retries, failure records, concurrency and cost.
The real llama.cpp server is in tests/test_server.py (marker `server`).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ads_cli import params as params_mod
from ads_cli.apis import APIResult
from ads_cli.cache import CallCache
from ads_cli.errors import AdsError
from ads_cli.method.calls import read_journal, run_calls
from ads_cli.engine.grammar import LineGrammar
from ads_cli.engine.openai import OpenAIModel
from ads_cli.method.policy import require_likelihood


def completion(text: str, prompt_tokens: int = 7, completion_tokens: int = 3, chat: bool = True) -> dict:
    choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    return {"choices": [dict(choice, index=0, finish_reason="stop")],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}


class Script:
    """What the server does per request: a function of (request number, body) -> (status, body, headers, delay)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.rule = lambda n, body: (200, completion("ok " + str(body.get("messages", body.get("prompt")))[-20:]), {}, 0.0)


@pytest.fixture
def server():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                n = len(script.requests)
                script.requests.append(dict(body, _path=self.path, _auth=self.headers.get("Authorization")))
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            try:
                rule = script.rule(n, body)
                if rule is None:  # drop the connection without an answer, like a server going down
                    self.close_connection = True
                    return
                status, payload, headers, delay = rule
                time.sleep(delay)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow answer
                pass
            finally:
                with script.lock:
                    script.in_flight -= 1

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)  # shutdown() waits one poll
    thread.start()
    script.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    script.httpd = httpd
    yield script
    httpd.shutdown()
    httpd.server_close()


class WordTokenizer:
    """A stand-in tokenizer: a token per word, a plain chat template."""

    def __call__(self, text, add_special_tokens=False):
        return type("Encoded", (), {"input_ids": text.split()})()

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def backend(url: str, tmp_path, **settings) -> OpenAIModel:
    s = dict(params_mod.SERVER, base_url=url, backoff=0.01, timeout=5.0, max_retries=2)
    s.update(settings)
    return OpenAIModel(s, "openai_policy", CallCache(tmp_path / "calls.sqlite"), WordTokenizer())


def test_generate_reads_text_and_usage_and_caches(server, tmp_path):
    b = backend(server.url, tmp_path)
    gens = b.generate(["What is the capital of France?", [{"role": "user", "content": "Hi"}]], max_new_tokens=5)
    assert [g.error for g in gens] == [None, None]
    assert gens[0].text.startswith("ok") and gens[0].cost == 10
    body = server.requests[0]
    assert body["_path"] == "/v1/chat/completions" and body["model"] == "smollm2-135m-instruct"
    assert body["max_tokens"] == 5 and body["temperature"] == 0.0 and "seed" not in body
    again = b.generate(["What is the capital of France?"], max_new_tokens=5)
    assert again[0].cached and again[0].text == gens[0].text and len(server.requests) == 2


def test_completion_sends_seed_stop_grammar_and_cuts_at_stop(server, tmp_path):
    server.rule = lambda n, body: (200, completion("retrieve: x | more", chat=False), {}, 0.0)
    grammar = LineGrammar(["retrieve:", "end"], first_line_options=["retrieve:", "none"], terminal=["none", "end"])
    b = backend(server.url, tmp_path, extra_body={"repeat_penalty": 1.0})
    g = b.generate(["Task: x\n"], temperature=0.8, seed=3, stop=[" | "], chat=False, grammar=grammar)[0]
    body = server.requests[0]
    assert body["_path"] == "/v1/completions" and body["prompt"] == "Task: x\n"
    assert isinstance(body["seed"], int) and body["stop"] == [" | "] and body["repeat_penalty"] == 1.0
    assert body["grammar"] == grammar.to_gbnf() and 'first ::= "retrieve:" rest | "none"' in body["grammar"]
    assert g.text == "retrieve: x"


def test_429_and_500_are_retried_with_backoff(server, tmp_path):
    answers = [(429, {"error": "slow down"}, {"Retry-After": "0.2"}, 0.0), (503, b"busy", {}, 0.0)]
    server.rule = lambda n, body: answers[n] if n < len(answers) else (200, completion("fine"), {}, 0.0)
    b = backend(server.url, tmp_path)
    started = time.monotonic()
    g = b.generate(["q"])[0]
    assert g.text == "fine" and g.error is None
    assert b.stats == {"requests": 3, "retries": 2, "failed": 0}
    assert time.monotonic() - started >= 0.2  # the Retry-After was honoured


def test_a_garbage_or_slow_answer_fails_only_its_call(server, tmp_path):
    def rule(n, body):
        question = body["messages"][0]["content"]
        if question == "garbage":
            return 200, b"<html>oops</html>", {}, 0.0
        if question == "slow":
            return 200, completion("late"), {}, 3.0
        if question == "no usage":
            return 200, {"choices": [{"message": {"content": "x"}}]}, {}, 0.0
        return 200, completion("answer to " + question), {}, 0.0

    server.rule = rule
    b = backend(server.url, tmp_path, timeout=1.0, max_retries=1)
    gens = b.generate(["a", "garbage", "b", "slow", "no usage", "c"])
    assert [g.text for g in gens] == ["answer to a", "", "answer to b", "", "", "answer to c"]
    assert "unreadable answer" in gens[1].error and "after 2 attempts" in gens[1].error
    assert "no answer within 1s" in gens[3].error
    assert "unreadable answer" in gens[4].error
    assert b.stats["failed"] == 3
    # failures are not cached: the next run asks again
    server.rule = lambda n, body: (200, completion("now fine"), {}, 0.0)
    again = b.generate(["a", "garbage", "slow"])
    assert [g.cached for g in again] == [True, False, False] and again[1].text == "now fine"


def test_concurrency_is_bounded(server, tmp_path):
    server.rule = lambda n, body: (200, completion("x"), {}, 0.15)
    b = backend(server.url, tmp_path, concurrency=2)
    b.generate([f"q{i}" for i in range(6)])
    assert server.max_in_flight == 2


def test_server_down_stops_with_one_line_and_keeps_what_was_received(server, tmp_path):
    b = backend(server.url, tmp_path, max_retries=1)
    b.generate(["first", "second"])
    server.httpd.shutdown()
    server.httpd.server_close()
    with pytest.raises(AdsError, match=r"cannot reach .* after 2 attempts .*start the server and run again"):
        b.generate(["first", "second", "third"])
    assert b.generate(["first", "second"])[1].cached  # what came back before is kept


def test_answers_in_flight_when_the_server_goes_down_are_kept(server, tmp_path):
    server.rule = lambda n, body: None if body["messages"][0]["content"] == "dead" else (200, completion("fine"), {}, 0.5)
    b = backend(server.url, tmp_path, max_retries=1, concurrency=4)
    with pytest.raises(AdsError, match="cannot reach"):
        b.generate(["a", "b", "c", "dead", "queued 1", "queued 2"])
    assert [b.all_cached([p]) for p in ("a", "b", "c", "dead")] == [True, True, True, False]


def test_a_server_that_fails_every_request_stops_the_run(server, tmp_path):
    server.rule = lambda n, body: (422, {"error": "unknown field"}, {}, 0.0)
    b = backend(server.url, tmp_path, concurrency=1)
    gens = b.generate([f"q{i}" for i in range(3)])
    assert all("HTTP 422" in g.error for g in gens)  # a few failures: recorded, the run goes on
    with pytest.raises(AdsError, match="requests in a row failed.*HTTP 422"):
        b.generate([f"p{i}" for i in range(12)])


def test_the_answer_api_records_a_failed_request_for_the_next_run(server, tmp_path):
    import copy

    from ads_cli.apis import Answer, APIContext

    server.rule = lambda n, body: ((500, b"overloaded", {}, 0.0) if "fails" in body["messages"][0]["content"]
                                   else (200, completion("Paris"), {}, 0.0))
    params = copy.deepcopy(params_mod.DEFAULTS)
    params["apis"]["answer_grounded"] = False
    ctx = APIContext(params, lambda: None, lambda: backend(server.url, tmp_path, max_retries=0))
    ok, failed = Answer(ctx).call_many(["capital of France?", "this fails"])
    assert ok.ok and ok.items[0]["answer"] == "Paris" and not ok.retry
    assert not failed.ok and failed.retry and "model request failed: HTTP 500" in failed.error


def test_a_refused_key_stops_the_run(server, tmp_path, monkeypatch):
    server.rule = lambda n, body: (401, {"error": "bad key"}, {}, 0.0)
    monkeypatch.setenv("ADS_TEST_KEY", "sekrit")
    b = backend(server.url, tmp_path, api_key_env="ADS_TEST_KEY")
    with pytest.raises(AdsError, match="refused the API key"):
        b.generate(["q"])
    assert server.requests[0]["_auth"] == "Bearer sekrit"
    monkeypatch.delenv("ADS_TEST_KEY")
    with pytest.raises(AdsError, match="ADS_TEST_KEY is not set"):
        backend(server.url, tmp_path, api_key_env="ADS_TEST_KEY")


def test_loglikelihood_sums_the_continuation_tokens(server, tmp_path):
    # OpenAI's convention: entry i is log p(token i | tokens before it); the last is the new token
    def rule(n, body):
        assert body["echo"] is True and body["logprobs"] == 1 and body["max_tokens"] == 1
        logprobs = {"tokens": ["The", " sky", " is", " blue", "."], "text_offset": [0, 3, 7, 10, 15],
                    "token_logprobs": [None, -2.0, -0.5, -1.25, -0.1],
                    "top_logprobs": [None, {" sky": -2.0}, {" is": -0.5}, {" blue": -1.25}, {".": -0.1}]}
        return 200, {"choices": [{"text": body["prompt"] + ".", "logprobs": logprobs}], "usage": {"prompt_tokens": 4}}, {}, 0.0

    server.rule = rule
    b = backend(server.url, tmp_path)
    assert b.loglikelihood([("The sky is", " blue")]) == [-1.25]
    assert b.loglikelihood([("The", " sky is blue")]) == [-3.75]


def test_loglikelihood_refuses_missing_or_shifted_logprobs(server, tmp_path):
    server.rule = lambda n, body: (200, {"choices": [{"text": "x", "logprobs": None}], "usage": {"prompt_tokens": 1}}, {}, 0.0)
    with pytest.raises(AdsError, match="likelihood scoring needs prompt logprobs.*has no logprobs"):
        backend(server.url, tmp_path).loglikelihood([("a", " b")])

    def shifted(n, body):  # each entry scored by the distribution after it: its top candidate is the next token
        logprobs = {"tokens": ["The", " sky", " is", " blue"], "text_offset": [0, 3, 7, 10],
                    "token_logprobs": [None, -9.0, -8.0, -7.0],
                    "top_logprobs": [None, {" is": -0.3}, {" blue": -0.4}, {".": -0.2}]}
        return 200, {"choices": [{"text": body["prompt"] + ".", "logprobs": logprobs}], "usage": {"prompt_tokens": 4}}, {}, 0.0

    server.rule = shifted
    with pytest.raises(AdsError, match="shifted by one token"):
        backend(server.url, tmp_path / "other").loglikelihood([("The sky is", " blue")])
    # a stage that needs the likelihood lens stops before any work, saying what to set instead
    with pytest.raises(AdsError, match=r"train.reward=likelihood needs the likelihood lens.*shifted by one token.*"
                                       r"Set lm.policy_backend=local, or .*train.reward=metric, evaluate.likelihood=false"):
        require_likelihood(backend(server.url, tmp_path / "third"), "train.reward=likelihood")


def test_failed_server_requests_are_not_journaled(tmp_path):
    class Flaky:
        name = "answer"

        def __init__(self):
            self.fail = True

        def call_many(self, args):
            return [APIResult(self.name, a, ok=False, error="model request failed: x", retry=True) if self.fail and a == "b"
                    else APIResult(self.name, a, items=[{"kind": "qa", "question": a, "answer": "y"}], cost=1.0) for a in args]

    api = Flaky()
    trajectories = [{"calls": [{"api": "answer", "arg": "a"}, {"api": "answer", "arg": "b"}]}]
    journal = tmp_path / "journal.jsonl"
    results, _ = run_calls({"answer": api}, trajectories, journal, 16, "k")
    assert sum(not r["ok"] for r in results.values()) == 1 and "retry" not in next(iter(results.values()))
    assert len(read_journal(journal, "k")[0]) == 1  # only the finished call
    api.fail = False
    results, resumed = run_calls({"answer": api}, trajectories, journal, 16, "k")
    assert resumed == 1 and all(r["ok"] for r in results.values())


@pytest.mark.parametrize("override, message", [
    (["lm.policy_backend=vllm"], "must be one of local, openai"),
    (["lm.policy_backend=openai", "openai_policy.base_url=localhost:8000"], "must start with http"),
    (["lm.policy_backend=openai", 'openai_policy.model=""'], "must name the served model"),
    (["lm.policy_backend=openai", "openai_policy.concurrency=0"], "concurrency must be >= 1"),
    (["lm.policy_backend=openai", "openai_policy.timeout=0"], "timeout must be > 0"),
    (["lm.policy_backend=openai", "openai_policy.backoff=.inf"], "backoff must be a finite number"),
    (["lm.policy_backend=openai", "openai_policy.extra_body={stream: true}"], "streaming is not supported"),
    (["lm.policy_backend=openai", "openai_policy.extra_body=[1]"], "extra_body must be dict"),
    (["lm.policy_backend=openai", "train.update=lora"], "needs lm.policy_backend=local"),
    (["lm.optimizer_backend=openai", "train.optimizer_update=sft", "openai_optimizer.grammar=true"], "needs lm.optimizer_backend=local"),
    (["lm.optimizer_backend=openai"], "set openai_optimizer.grammar=true"),
])
def test_backend_params_are_checked_up_front(tmp_path, override, message):
    path = tmp_path / "params.yaml"
    path.write_text("{}\n")
    with pytest.raises(AdsError, match=message):
        params_mod.load(path, override)
    params_mod.load(path, ["lm.optimizer_backend=openai", "openai_optimizer.grammar=true"])  # a valid server setup


def test_ads_serve_explains_what_is_missing(project, monkeypatch):
    from typer.testing import CliRunner

    from ads_cli.stages import serve
    from ads_cli.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--role", "judge"])
    assert result.exit_code == 2 and "expected policy or optimizer" in result.output
    result = runner.invoke(app, ["serve", "--set", "lm.policy=hf:HuggingFaceTB/SmolLM2-135M-Instruct"])
    assert result.exit_code == 2 and "not a GGUF file" in result.output
    monkeypatch.setattr(serve.importlib.util, "find_spec", lambda name: None)
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2 and "pip install -e '.[server]'" in result.output, result.output


def test_the_likelihood_check_passes_other_failures_through(server, tmp_path):
    """An unreachable server is not "a policy that cannot score likelihoods": the check says what it is."""
    b = backend(server.url, tmp_path, max_retries=0)
    server.httpd.shutdown()
    server.httpd.server_close()
    with pytest.raises(AdsError) as caught:
        require_likelihood(b, "train.reward=likelihood")
    assert "cannot reach" in str(caught.value) and "needs the likelihood lens" not in str(caught.value)

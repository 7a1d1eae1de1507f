"""The learning signal: the policy's prompt layout, likelihood scores per byte, the acceptance
rule of rejection sampling, seed exemplars that can transfer, and argument quality."""

import math

import pytest

from ads_cli.cache import CallCache
from ads_cli.engine.base import Generation, generation_key, loglik_key
from ads_cli.method.evaluation import METHODS, REFERENCE, summarize
from ads_cli.method.optimizer import argument_quality, seed_exemplars
from ads_cli.method.policy import answer_observed, example_messages, likelihood_scores
from ads_cli.method.reward import clears_noise, gains, keeps_earlier, select_best
from ads_cli.params import tie_epsilon
from ads_cli.method.tasks import references
from ads_fake_backend import FakeModel


def test_layout_puts_data_first_then_demonstrations_then_the_question():
    demos = [{"input": "What is 2 + 2?", "reference": ["4", "four"]},
             {"input": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 3?"}], "reference": "6"}]
    messages = example_messages([{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "5 + 5?"}],
                                "Addition is arithmetic.", demos)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("system", "Use this information if it helps.\nAddition is arithmetic."),
        ("user", "What is 2 + 2?"), ("assistant", "4"),
        ("user", "What is 3 + 3?"), ("assistant", "6"),  # a demonstration is its question, not its system prompt
        ("system", "Answer with a number."), ("user", "5 + 5?"),
    ]
    # no data and no demonstrations: the prompt is the example itself, as before the layout existed
    assert example_messages("5 + 5?") == [{"role": "user", "content": "5 + 5?"}]


class RecordingFake(FakeModel):
    """The fake model, remembering the pairs it scored."""

    def __init__(self):
        super().__init__(CallCache(None))
        self.scored = []

    def _loglikelihood(self, pairs, progress):
        for index, value in super()._loglikelihood(pairs, progress):
            self.scored.append((pairs[[p.index for p in pairs].index(index)], value))
            yield index, value


def test_likelihood_is_the_best_reference_in_log2_per_utf8_byte():
    model = RecordingFake()
    task = {"id": "t", "observed": [], "metric": "exact",
            "heldout": [{"input": "Name the city.", "reference": ["Zürich", "Bern"]}, {"input": "Say hi.", "reference": "hi"}]}
    scores = likelihood_scores(model, task, "Bern is the capital. Zürich is larger.")
    by_ref = {pair.continuation: value for pair, value in model.scored}
    assert set(by_ref) == {"Zürich", "Bern", "hi"}
    # by hand: nats -> bits, divided by the UTF-8 bytes of the reference ("Zürich" is 7 bytes, not 6)
    zurich, bern = by_ref["Zürich"] / math.log(2) / 7, by_ref["Bern"] / math.log(2) / 4
    assert scores[0] == pytest.approx(max(zurich, bern), abs=1e-6)
    assert scores[1] == pytest.approx(by_ref["hi"] / math.log(2) / 2, abs=1e-6)
    assert len("Zürich".encode()) == 7


def test_acceptance_needs_a_gain_that_clears_the_noise():
    assert gains([0.5, 0.2], [0.25, 0.25]) == [0.25, -0.05]
    assert clears_noise([0.1, 0.2, 0.15, 0.1, 0.3, 0.12, 0.2, 0.1])  # every example better
    assert not clears_noise([0.9, 0, 0, 0, 0, 0, 0, 0])  # one lucky example: a resample loses it
    assert not clears_noise([0.3, -0.3, 0.2, -0.25, 0.1, -0.1, 0.05, 0.0])  # noise around 0
    assert not clears_noise([-0.1] * 8) and not clears_noise([0.2])


def _row(tid, reward, accepted=True, cost=10.0):
    return {"trajectory_id": tid, "task_id": "t", "calls": [{"api": "retrieve", "arg": tid}], "reward": reward, "cost": cost,
            "accepted": accepted}


def test_rejection_sampling_keeps_only_accepted_trajectories():
    best = select_best([_row("t#1.0", 0.9, accepted=False), _row("t#1.1", 0.2)], 0.0)
    assert best["trajectory_id"] == "t#1.1"  # the larger reward was noise
    best = select_best([_row("t#1.0", 0.9, accepted=False)], 0.0)
    assert best["calls"] == [] and best["reward"] == 0.0  # collecting nothing stays a valid outcome


def test_seed_exemplars_ask_for_task_level_data_never_an_observed_answer():
    seeds = seed_exemplars()
    assert len(seeds) >= 4 and all(s["seed"] for s in seeds)
    assert {c["api"] for s in seeds for c in s["calls"]} == {"retrieve", "demonstrate", "answer"}
    assert any(not s["calls"] for s in seeds)  # one shows that collecting nothing is right
    for s in seeds:
        for call in s["calls"]:
            for ref in references(s["reference"]):
                assert ref.lower() not in call["arg"].lower(), (s["task"], call)
            # a task-level request, not the example's own question or entity
            assert call["arg"].lower() not in s["example"].lower(), (s["task"], call)


def test_argument_quality():
    tasks = [{"id": "t", "name": "world capitals", "observed": [{"input": "What is the capital of Kenya?", "reference": "Nairobi"}]}]
    trajectories = [
        {"task_id": "t", "calls": [{"api": "retrieve", "arg": "Nairobi"}, {"api": "retrieve", "arg": "capital of  Kenya"}]},
        {"task_id": "t", "calls": [{"api": "demonstrate", "arg": "capital cities"}, {"api": "retrieve", "arg": "Nairobi"}]},
        {"task_id": "t", "calls": [], "parse_error": "not a call"},
    ]
    assert argument_quality(trajectories, tasks) == {"arguments": 4, "copies_reference": 0.5, "span_of_task": 0.25,
                                                     "distinct": 3}


class BatchSensitiveFake(FakeModel):
    """Scores that depend on which pairs are computed together, as floating-point batches do."""

    def __init__(self, cache):
        super().__init__(cache)
        self.calls = []

    def _loglikelihood(self, pairs, progress):
        self.calls.append([(p.continuation, p.needed) for p in pairs])
        for index, value in super()._loglikelihood(pairs, progress):
            yield index, value + 1e-3 * len(pairs)


def test_a_resumed_scoring_call_gives_the_values_of_an_uninterrupted_one(tmp_path):
    pairs = [("The sky is blue.", f" answer {k}") for k in range(5)]
    first = BatchSensitiveFake(CallCache(tmp_path / "a.sqlite")).loglikelihood(pairs)
    # a run killed after storing two values: the rerun scores the rest in the call's own batches
    resumed_cache = CallCache(tmp_path / "b.sqlite")
    scorer = BatchSensitiveFake(resumed_cache)
    for (context, continuation), value in list(zip(pairs, first))[:2]:
        resumed_cache.put(loglik_key(scorer.model_id, context, continuation), value)
    assert scorer.loglikelihood(pairs) == first
    assert scorer.calls == [[(c, k >= 2) for k, (_, c) in enumerate(pairs)]]  # all pairs seen, two not needed
    assert scorer.loglikelihood(pairs) == first and len(scorer.calls) == 1  # then all from the cache


def test_the_optimizer_sees_the_policy_the_reward_scores():
    """With the few-shot layout, each observed example is answered with the other observed ones
    as demonstrations: never with itself."""
    model = RecordingChat()
    task = {"id": "t", "metric": "exact", "heldout": [],
            "observed": [{"input": f"Question {k}?", "reference": f"Answer {k}"} for k in range(3)]}
    params = {"train": {"fewshot": True}, "lm": {"max_new_tokens": 8}}
    answers = answer_observed(model, [task], params, "observed")
    assert len(answers["t"]) == 3
    for k, messages in enumerate(model.prompts):
        shown = [m["content"] for m in messages if m["role"] == "assistant"]
        assert shown == [f"Answer {j}" for j in range(3) if j != k] and messages[-1]["content"] == f"Question {k}?"
    model.prompts.clear()
    answer_observed(model, [task], {"train": {"fewshot": False}, "lm": {"max_new_tokens": 8}}, "observed")
    assert [len(m) for m in model.prompts] == [1, 1, 1]  # zero-shot layout: the bare question


class RecordingChat(FakeModel):
    def __init__(self):
        super().__init__(CallCache(None))
        self.prompts = []

    def _generate(self, requests, decoding, progress):
        self.prompts += [r.payload for r in requests]
        yield from super()._generate(requests, decoding, progress)


def test_a_task_keeps_an_earlier_exemplar_that_did_better():
    earlier = {"calls": [{"api": "retrieve", "arg": "capital cities"}], "reward": 0.12, "trajectory_id": "t#1.2"}
    nothing = {"trajectory_id": None, "calls": [], "reward": 0.0}
    assert keeps_earlier(earlier, nothing)  # iteration 2 found nothing that cleared the noise
    assert not keeps_earlier(earlier, {"trajectory_id": "t#2.0", "calls": earlier["calls"], "reward": 0.2})
    assert not keeps_earlier(None, nothing) and not keeps_earlier({"calls": [], "reward": 0.0}, nothing)


def test_ties_are_judged_in_each_lens_own_unit():
    section = {"tie_epsilon": 0.05, "tie_epsilon_likelihood": 0.02}
    assert tie_epsilon(section, "metric") == 0.05 and tie_epsilon(section, "likelihood") == 0.02
    results = [{"category": "c", "parse_error": None, "methods": {m: {"score": 0.5, "likelihood": -1.0, "cost": 0.0}
                                                                  for m in METHODS + [REFERENCE]}} for _ in range(4)]
    for r in results:
        r["methods"]["ads"]["likelihood"] = -0.97  # +0.03 bits per byte: beyond the likelihood lens's margin
    assert summarize(results, "likelihood", tie_epsilon(section, "likelihood"), 0)["vs"]["no_data"]["win_rate"] == 1.0
    assert summarize(results, "likelihood", tie_epsilon(section, "metric"), 0)["vs"]["no_data"]["tie_rate"] == 1.0


def test_phases_count_time_exclusively(monkeypatch):
    from ads_cli import progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])

    def wait(seconds):
        clock[0] += seconds

    progress.reset_phases()
    with progress.phase("outer"):
        wait(1.0)
        with progress.phase("inner"):
            wait(2.0)
        wait(0.5)
    wait(4.0)  # outside any phase
    assert progress.phase_seconds(total=7.5) == {"outer": 1.5, "inner": 2.0, "other (Python, I/O)": 4.0}
    with progress.phase("open"):
        wait(3.0)
        progress.reset_phases()  # a run starts inside an open phase: only what follows counts
        wait(1.0)
    assert progress.phase_seconds() == {"open": 1.0}


class BatchSensitiveChat(FakeModel):
    """Answers that depend on how many prompts are computed together, as floating-point batches do."""

    def _generate(self, requests, decoding, progress):
        for index, gen in super()._generate(requests, decoding, progress):
            yield index, Generation(f"{gen.text} ({len(requests)} in the call)", gen.prompt_tokens, gen.completion_tokens)


def test_a_resumed_generate_call_gives_the_answers_of_an_uninterrupted_one(tmp_path):
    prompts = [f"What is the capital of country {k}?" for k in range(5)]
    first = BatchSensitiveChat(CallCache(tmp_path / "a.sqlite")).generate(prompts)
    resumed = CallCache(tmp_path / "b.sqlite")
    model = BatchSensitiveChat(resumed)
    for prompt, gen in zip(prompts[:2], first[:2]):  # a run killed after storing two answers
        resumed.put(generation_key(model.model_id, model.payload(prompt, True), 48, 0.0, 0, [])[0], gen.cache_record())
    assert [g.text for g in model.generate(prompts)] == [g.text for g in first]


def test_no_completed_task_draws_no_evaluation_chart(tmp_path):
    from ads_cli.charts import evaluation_charts

    assert evaluation_charts({"completed_tasks": 0, "lenses": {"metric": {"methods": {}, "by_category": {}}}}, tmp_path) == []
    assert not list(tmp_path.iterdir())

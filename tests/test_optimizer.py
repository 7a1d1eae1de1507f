from hypothesis import given, strategies as st

from ads_cli.apis import parse_pairs
from ads_cli.method.optimizer import build_prompt, error_kind, parse_trajectory, seed_exemplars, select_exemplars

APIS = {"retrieve", "demonstrate", "answer"}


def test_parses_calls_until_end():
    calls, err = parse_trajectory("retrieve: Kenya\nanswer: Who directed Jaws?\nend\nretrieve: ignored", APIS, 3)
    assert err is None and calls == [{"api": "retrieve", "arg": "Kenya"}, {"api": "answer", "arg": "Who directed Jaws?"}]


def test_none_is_a_valid_empty_trajectory():
    assert parse_trajectory("none\nend", APIS, 3) == ([], None)


def test_calls_beyond_the_limit_are_dropped():
    calls, err = parse_trajectory("retrieve: a\nretrieve: b\nretrieve: c", APIS, 2)
    assert err is None and [c["arg"] for c in calls] == ["a", "b"]


def test_errors():
    errors = {text: parse_trajectory(text, APIS, 3)[1] for text in
              ("search: Kenya", "retrieve:   ", "I would look up Kenya", "", "retrieve: a\nnone")}
    assert errors == {
        "search: Kenya": "unknown API at line 1: 'search'",
        "retrieve:   ": "empty argument at line 1: retrieve",
        "I would look up Kenya": "not a call at line 1: 'I would look up Kenya' (expected 'api: argument')",
        "": "no calls (an empty trajectory is written 'none')",
        "retrieve: a\nnone": "none after calls at line 2",
    }
    assert sorted(error_kind(e) for e in errors.values()) == ["empty argument", "no calls", "none after calls", "not a call", "unknown API"]


@given(st.text(max_size=200))
def test_parser_never_raises_and_is_all_or_nothing(text):
    calls, err = parse_trajectory(text, APIS, 3)
    assert (err is None) or calls == []
    assert len(calls) <= 3
    assert all(c["api"] in APIS and c["arg"] for c in calls)


def test_prompt_shows_observed_never_heldout():
    task = {"id": "t", "name": "capitals", "category": "knowledge",
            "observed": [{"input": "What is the capital of Peru?", "reference": "Lima"}],
            "heldout": [{"input": "SECRET HELDOUT QUESTION", "reference": "SECRET"}]}
    prompt = build_prompt(task, [{"answer": "Cusco", "score": 0.0}], seed_exemplars(), ["retrieve: <q> -- passages"])
    assert "capital of Peru" in prompt and "model said: Cusco (score 0.0)" in prompt
    assert "SECRET" not in prompt
    assert prompt.endswith("Task: capitals (knowledge)\nExample: What is the capital of Peru? | correct: Lima | model said: Cusco (score 0.0)\nCalls:\n")
    assert all(e["seed"] for e in seed_exemplars())


def _learned(task_id, category, reward):
    return {"task": task_id, "task_id": task_id, "category": category, "reward": reward, "calls": [], "seed": False}


def test_a_task_sees_its_own_best_trajectory_last_and_a_new_task_its_categorys_best():
    learned = [_learned("a", "math", 0.1), _learned("b", "math", 0.5), _learned("c", "other", 0.9), _learned("d", "math", 0.0)]
    # a task with no exemplar of its own (a test task): same category first, best reward first
    assert [e["task"] for e in select_exemplars("math", learned, 3)] == ["b", "a", "d"]
    assert [e["task"] for e in select_exemplars("math", learned, 3, "new")] == ["b", "a", "d"]
    # a train task's own exemplar goes last, nearest its block, and is never repeated
    assert [e["task"] for e in select_exemplars("math", learned, 3, "a")] == ["b", "d", "a"]
    assert [e["task"] for e in select_exemplars("math", learned, 3, "b")] == ["a", "d", "b"]
    assert [e["task"] for e in select_exemplars("math", learned, 5, "d")] == ["b", "a", "c", seed_exemplars()[0]["task"], "d"]
    assert [e["task"] for e in select_exemplars("math", learned, 1, "c")] == ["c"]
    assert select_exemplars("math", learned, 0, "a") == []
    # two exemplars of one task (a hand-merged state): its best goes last, the other nowhere
    twice = learned + [_learned("a", "math", 0.7)]
    assert [(e["task"], e["reward"]) for e in select_exemplars("math", twice, 3, "a")] == [("b", 0.5), ("d", 0.0), ("a", 0.7)]
    # iteration 1: nothing learned, the seeds
    assert select_exemplars("math", [], 2, "a") == seed_exemplars()[:2]


def test_a_tasks_own_trajectory_is_shown_under_its_whole_block():
    task = {"id": "t1", "name": "capitals", "category": "knowledge",
            "observed": [{"input": "Capital of Peru?", "reference": "Lima"}, {"input": "Capital of Chad?", "reference": ["N'Djamena"]}]}
    answers = [{"answer": "Cusco", "score": 0.0}, {"answer": "N'Djamena", "score": 1.0}]
    own = _learned("t1", "knowledge", 0.3) | {"calls": [{"api": "retrieve", "arg": "capital cities"}], "example": "Capital of Peru?",
                                               "reference": "Lima", "policy_answer": "Cusco", "score": 0.0}
    other = _learned("t2", "knowledge", 0.5) | {"example": "Largest lake?", "reference": "Superior", "policy_answer": "Erie", "score": 0.0}
    prompt = build_prompt(task, answers, select_exemplars("knowledge", [own, other], 2, "t1"), ["retrieve: <q> -- passages"])
    block = ("Task: capitals (knowledge)\nExample: Capital of Peru? | correct: Lima | model said: Cusco (score 0.0)\n"
             "Example: Capital of Chad? | correct: N'Djamena | model said: N'Djamena (score 1.0)\nCalls:\n")
    assert prompt.endswith("Task: t2 (knowledge)\nExample: Largest lake? | correct: Superior | model said: Erie (score 0.0)\nCalls:\nnone\nend\n\n"
                           + block + "retrieve: capital cities\nend\n\n" + block)
    # another task of the category sees t1's exemplar in the one-example form
    other_task = task | {"id": "t3", "name": "rivers"}
    prompt3 = build_prompt(other_task, answers, select_exemplars("knowledge", [own, other], 2, "t3"), ["retrieve: <q> -- passages"])
    assert prompt3.count("Capital of Chad?") == 1 and "Task: t1 (knowledge)" in prompt3


def test_parse_pairs_is_robust():
    text = "Q: What is the opposite of hot?\nA: cold\n\n2. Question: Opposite of up?\nAnswer: down\nQ: dangling question"
    pairs, failed = parse_pairs(text)
    assert pairs == [("What is the opposite of hot?", "cold"), ("Opposite of up?", "down")] and failed == 1
    assert parse_pairs("no pairs here") == ([], 0)

"""`ads prepare`: pinned raw sources (or the user's files) -> docs.jsonl, tasks_train/test.jsonl.

Documents become `{id, title, text, description, topic}`. Tasks come from an OpenAI evals
registry (one task per data file, metric from the registry's own eval spec) or from a flat file
of examples `{task, input, reference, metric?, category?}`. Tasks are split into disjoint train
and test sets by seed; each task's examples into `observed` and `heldout`.
"""

from __future__ import annotations

import collections
import random
import re
import time
from pathlib import Path

import orjson
import yaml

from ..errors import AdsError
from ..jsonl import write_json, write_jsonl
from ..method.tasks import input_text, last_message, references
from ..params import METRICS
from ..paths import Paths
from ..progress import log, track
from ..sources import Lock, load_records, open_files

_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads the 463 specs 10x faster

# evals registry eval classes that are scored against references, and the metric each means
EVAL_CLASS_METRIC = {
    "evals.elsuite.basic.match:Match": "exact",
    "evals.elsuite.basic.includes:Includes": "contains",
    "evals.elsuite.basic.fuzzy_match:FuzzyMatch": "f1",
}

# first keyword that appears in a task's name or description decides its category
CATEGORY_KEYWORDS = [
    ("math", ("math", "arithmetic", "algebra", "number", "count", "calcul", "equation", "numeral", "sum", "digit")),
    ("code", ("code", "sql", "python", "regex", "program", "json", "css", "html", "bash")),
    ("language", ("translat", "word", "grammar", "spell", "anagram", "language", "rhym", "synonym", "letter", "sentence", "lexicon", "idiom", "pronoun")),
    ("knowledge", ("capital", "country", "history", "geograph", "trivia", "fact", "qa", "question", "chemistry", "physics", "biology", "medic", "law", "knowledge", "science")),
    ("reasoning", ("logic", "puzzle", "riddle", "reason", "deduc", "infer", "sequence", "pattern")),
]


def categorize(name: str, description: str = "") -> str:
    text = f"{name} {description}".lower()
    for category, words in CATEGORY_KEYWORDS:
        if any(w in text for w in words):
            return category
    return "other"


def _ascii_ratio(text: str) -> float:
    return sum(c.isascii() for c in text) / len(text) if text else 0.0


# the commonest English function words; their share of a task's words is a cheap language test
ENGLISH_STOPWORDS = frozenset(
    "the a an of to in and or is are was were be been it this that these those for on with as at by from"
    " what which who whom whose when where why how not no do does did has have had can will would should"
    " you your i he she they we its their there if then than but so".split()
)
_ALPHA_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def english_share(texts: list[str]) -> float | None:
    """Share of alphabetic words that are English stop words; None if there are too few words to tell."""
    words = [w.lower() for t in texts for w in _ALPHA_WORD.findall(t)]
    if len(words) < 50:
        return None  # numeric or symbolic tasks: no evidence either way
    return sum(w in ENGLISH_STOPWORDS for w in words) / len(words)


# ---------------------------------------------------------------- documents


def normalize_docs(records: list[dict], label: str) -> list[dict]:
    """User or packaged records -> `{id, title, text, description, topic}`; ids must be unique."""
    docs, seen = [], set()
    for i, rec in enumerate(records, start=1):
        title = rec.get("title")
        text = rec.get("text", rec.get("extract"))
        if not isinstance(title, str) or not title.strip():
            raise AdsError(f"{label}: record {i}: missing field 'title' (a non-empty string)")
        if not isinstance(text, str) or not text.strip():
            raise AdsError(f"{label}: record {i}: missing field 'text' (a non-empty string)")
        doc_id = str(rec["id"]) if rec.get("id") is not None else f"d{i:05d}"
        if doc_id in seen:
            raise AdsError(f"{label}: record {i}: duplicate id {doc_id!r}")
        seen.add(doc_id)
        docs.append({
            "id": doc_id,
            "title": title.strip(),
            "text": " ".join(text.split()),
            "description": str(rec.get("description") or ""),
            "topic": str(rec.get("topic") or ""),
        })
    if not docs:
        raise AdsError(f"{label}: no documents")
    return docs


# ---------------------------------------------------------------- tasks


class Filters:
    def __init__(self, p: dict):
        self.min_samples = p["min_samples"]
        self.max_input = p["max_input_chars"]
        self.max_ref = p["max_reference_chars"]
        self.min_ascii = p["min_ascii_ratio"]
        self.min_english = p["min_english_share"]

    def keep(self, example: dict) -> bool:
        text = input_text(example["input"])
        refs = references(example["reference"])
        return (
            0 < len(text) <= self.max_input
            and all(0 < len(r.strip()) <= self.max_ref for r in refs)
            and _ascii_ratio(last_message(example["input"]) + "".join(refs)) >= self.min_ascii
        )

    def keep_task(self, examples: list[dict], skipped: collections.Counter) -> bool:
        if len(examples) < self.min_samples:
            skipped["too_few_samples"] += 1
            return False
        share = english_share([last_message(e["input"]) for e in examples])
        if share is not None and share < self.min_english:
            skipped["not_english"] += 1
            return False
        return True


def _registry_specs(files) -> dict[str, dict]:
    """samples path (relative to data/) -> {name, cls, description}, from evals/*.yaml."""
    specs: dict[str, dict] = {}
    for rel in files.paths():
        if not (rel.startswith("evals/") and rel.endswith(".yaml")):
            continue
        try:
            doc = yaml.load(files.read(rel), Loader=_YamlLoader) or {}
        except yaml.YAMLError:
            continue  # a broken spec only means its data file falls back to the default metric
        if not isinstance(doc, dict):
            continue
        descriptions = {k: v.get("description", "") for k, v in doc.items() if isinstance(v, dict) and "id" in v}
        for key, entry in doc.items():
            if not (isinstance(entry, dict) and "class" in entry):
                continue
            samples = (entry.get("args") or {}).get("samples_jsonl")
            if isinstance(samples, str):
                base = key.split(".")[0]
                specs.setdefault(samples, {"name": base, "cls": entry["class"], "description": descriptions.get(base, "")})
    return specs


def load_registry_tasks(files, p: dict, skipped: collections.Counter) -> list[dict]:
    specs = _registry_specs(files)
    filters = Filters(p)
    data_files = [r for r in files.paths() if r.startswith("data/") and r.endswith(".jsonl")]
    tasks = []
    with track("prepare: tasks", total=len(data_files)) as progress:
        for rel in data_files:
            progress.step()
            task_path = rel[len("data/"):]
            raw = files.read(rel)
            if raw.startswith(b"version https://git-lfs"):
                skipped["git_lfs_pointer"] += 1
                continue
            spec = specs.get(task_path)
            if spec is None:
                if "fewshot" in task_path or "few_shot" in task_path:
                    skipped["few_shot_file"] += 1
                    continue
                metric, name, description = p["default_metric"], task_path.split("/")[0], ""
            elif spec["cls"] not in EVAL_CLASS_METRIC:
                skipped["not_reference_scored"] += 1
                continue
            else:
                metric, name, description = EVAL_CLASS_METRIC[spec["cls"]], spec["name"], spec["description"]
            try:
                samples = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
            except orjson.JSONDecodeError:
                skipped["malformed_file"] += 1
                continue
            if not all(isinstance(s, dict) and "input" in s and "ideal" in s for s in samples):
                skipped["malformed_file"] += 1
                continue
            examples = [{"input": s["input"], "reference": s["ideal"]} for s in samples]
            examples = [e for e in examples if filters.keep(e)]
            if not filters.keep_task(examples, skipped):
                continue
            task_id = task_path[: -len(".jsonl")]
            tasks.append({
                "id": task_id, "name": name, "description": description, "metric": metric,
                "category": categorize(name, description), "examples": examples,
            })
    return tasks


def load_flat_tasks(records: list[dict], p: dict, label: str, skipped: collections.Counter) -> list[dict]:
    """One example per record: `{task, input, reference, metric?, category?}`, grouped by task."""
    grouped: dict[str, dict] = {}
    for i, rec in enumerate(records, start=1):
        for field in ("task", "input", "reference"):
            if rec.get(field) in (None, ""):
                raise AdsError(f"{label}: record {i}: missing field {field!r}")
        metric = rec.get("metric") or p["default_metric"]
        if metric not in METRICS:
            raise AdsError(f"{label}: record {i}: unknown metric {metric!r} (choose from {', '.join(METRICS)})")
        task_id = str(rec["task"])
        task = grouped.setdefault(task_id, {
            "id": task_id, "name": task_id, "description": str(rec.get("description") or ""),
            "metric": metric, "category": str(rec.get("category") or categorize(task_id)), "examples": [],
        })
        if task["metric"] != metric:
            raise AdsError(f"{label}: record {i}: task {task_id!r} mixes metrics {task['metric']!r} and {metric!r}")
        task["examples"].append({"input": rec["input"], "reference": rec["reference"]})
    filters = Filters(p)
    tasks = []
    for task in grouped.values():
        task["examples"] = [e for e in task["examples"] if filters.keep(e)]
        if not filters.keep_task(task["examples"], skipped):
            continue
        tasks.append(task)
    return tasks


def split_examples(task: dict, seed: int, observed: int, heldout: int) -> dict:
    """Shuffle one task's examples by (seed, task id): the first k are observed, the next m held out."""
    examples = list(task["examples"])
    random.Random(f"{seed}:{task['id']}").shuffle(examples)
    out = {k: v for k, v in task.items() if k != "examples"}
    out["n_examples"] = len(examples)
    out["observed"] = examples[:observed]
    out["heldout"] = examples[observed: observed + heldout]
    return out


def split_tasks(tasks: list[dict], seed: int, n_test: int, n_train: int) -> tuple[list[dict], list[dict]]:
    """Disjoint train/test sets by seed, stratified by category. `n_train` 0: every task not in test.

    Each category is shuffled on its own and its tasks get evenly spaced ranks in [0, 1); taking
    tasks in rank order gives every category its share of test and of train. Test takes the lowest
    ranks and train the highest, so growing one set leaves the other as it was (until they meet).
    """
    by_category: dict[str, list[dict]] = collections.defaultdict(list)
    for task in sorted(tasks, key=lambda t: t["id"]):
        by_category[task["category"]].append(task)
    ranked = []
    for category, group in sorted(by_category.items()):
        random.Random(f"{seed}:{category}").shuffle(group)
        offset = random.Random(f"{seed}:{category}:offset").random()
        ranked += [((i + offset) / len(group), task["id"], task) for i, task in enumerate(group)]
    ordered = [task for _, _, task in sorted(ranked, key=lambda r: (r[0], r[1]))]
    test = ordered[:n_test]
    rest = ordered[n_test:]
    train = rest if n_train == 0 else rest[len(rest) - min(n_train, len(rest)):]
    return sorted(train, key=lambda t: t["id"]), sorted(test, key=lambda t: t["id"])


def run(params: dict, paths: Paths, docs_source: str | None = None, tasks_source: str | None = None) -> dict:
    """Run the stage; returns the manifest it wrote."""
    p = params["prepare"]
    started = time.monotonic()
    cache_dir = paths.resolve(params["sources"]["cache_dir"], "sources.cache_dir")
    lock = Lock(paths.resolve(params["sources"]["lock"], "sources.lock"))
    # sources named in params are confined to the project; --docs/--tasks are the user's own choice
    docs_source = docs_source or _confined(p["docs"], paths, "prepare.docs")
    tasks_source = tasks_source or _confined(p["tasks"], paths, "prepare.tasks")
    timings: dict[str, float] = {}

    t = time.monotonic()
    doc_records, docs_sha = load_records(docs_source, cache_dir, lock)
    docs = normalize_docs(doc_records, docs_source)
    timings["docs_s"] = round(time.monotonic() - t, 3)

    t = time.monotonic()
    skipped: collections.Counter = collections.Counter()
    files = None
    if not is_records_source(tasks_source):
        files = open_files(tasks_source, cache_dir, lock)
    if files is not None and any(r.startswith("data/") for r in files.paths()):
        tasks = load_registry_tasks(files, p, skipped)
        tasks_sha = files.sha256
    else:
        records, tasks_sha = load_records(tasks_source, cache_dir, lock)
        if not records:
            raise AdsError(f"{tasks_source}: task file is empty")
        tasks = load_flat_tasks(records, p, tasks_source, skipped)
    if not tasks:
        raise AdsError(
            f"{tasks_source}: no task has {p['min_samples']} examples that pass the filters"
            f" (skipped: {dict(skipped) or 'none'})"
        )
    tasks = [split_examples(task, p["seed"], p["observed"], p["heldout"]) for task in tasks]
    train, test = split_tasks(tasks, p["seed"], p["n_test"], p["n_train"])
    if not train:
        raise AdsError(f"prepare: {len(tasks)} tasks leave no train tasks after n_test={p['n_test']}")
    timings["tasks_s"] = round(time.monotonic() - t, 3)

    write_jsonl(paths.docs, docs)
    write_jsonl(paths.tasks_train, train)
    write_jsonl(paths.tasks_test, test)
    timings["total_s"] = round(time.monotonic() - started, 3)
    manifest = {
        "stage": "prepare",
        "inputs": {"docs": {"source": paths.relative(docs_source), "sha256": docs_sha},
                   "tasks": {"source": paths.relative(tasks_source), "sha256": tasks_sha}},
        "params": p,
        "counts": {
            "docs": len(docs), "tasks_kept": len(tasks), "tasks_train": len(train), "tasks_test": len(test),
            "skipped": dict(sorted(skipped.items())),
            "metrics": dict(collections.Counter(t["metric"] for t in tasks)),
            "categories": dict(collections.Counter(t["category"] for t in tasks)),
        },
    }
    write_json(paths.prepared_manifest, manifest)
    write_json(paths.run_log("prepare"), {"timings": timings})
    log.info("prepare: %d docs, %d train tasks, %d test tasks, skipped %s", len(docs), len(train), len(test), dict(skipped))
    return manifest | {"run": {"timings": timings}}


def _confined(source: str, paths: Paths, what: str) -> str:
    if source.startswith(("pypi:", "hf:")):
        return source
    return str(paths.resolve(source, what))


def is_records_source(source: str) -> bool:
    """True when a source is a single records file (so it cannot be an evals registry folder)."""
    if source.startswith("hf:"):
        return True
    if source.startswith("pypi:"):
        return source.rsplit("#", 1)[-1].endswith((".json", ".jsonl", ".parquet"))
    return Path(source).expanduser().is_file()

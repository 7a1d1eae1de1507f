"""The data APIs the optimizer calls: one small interface, a registry, and the three built-ins.

An API has a `name`, a one-line `description` that the optimizer is shown, and
`__call__(arg) -> APIResult`. `call_many(args)` runs several calls at once (the model-backed
APIs batch them). Users add an API through the entry-point group `ads.apis`: the entry point is
a factory `make(context: APIContext) -> API`.

Cost is in one unit everywhere: tokens read plus tokens generated, plus a fixed price per
retrieval (`apis.retrieval_price`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Protocol

from .errors import AdsError
from .progress import log

ENTRY_POINT_GROUP = "ads.apis"


@dataclass
class APIResult:
    api: str
    arg: str
    items: list[dict] = field(default_factory=list)
    cost: float = 0.0
    ok: bool = True
    error: str | None = None
    retry: bool = False  # failed for a passing reason (a server request): not journaled, a rerun calls again

    def as_dict(self) -> dict:
        record = asdict(self)
        del record["retry"]
        return record


def failed_request(api: str, arg: str, error: str) -> APIResult:
    return APIResult(api, arg, ok=False, error=f"model request failed: {error}", retry=True)


class API(Protocol):
    name: str
    description: str

    def __call__(self, arg: str) -> APIResult: ...


def call_many(api: Any, args: list[str]) -> list[APIResult]:
    """Run `args` through `api`, batched where the API can; an exception fails only its call."""
    if hasattr(api, "call_many"):
        try:
            return api.call_many(args)
        except AdsError:  # the run cannot go on (a server that cannot be reached, say)
            raise
        except Exception as e:  # a broken batch falls back to one call at a time
            log.warning("%s: batch failed (%s); calling one by one", api.name, e)
    results = []
    for arg in args:
        try:
            results.append(api(arg))
        except AdsError:
            raise
        except Exception as e:  # an API that raises is recorded, and the run goes on
            results.append(APIResult(api.name, arg, ok=False, error=f"{type(e).__name__}: {e}"))
    return results


@dataclass
class APIContext:
    """What an API may use: the project's params, the index, and the QA / generator model."""

    params: dict
    searcher_factory: Callable[[], Any]
    model_factory: Callable[[], Any]
    _searcher: Any = None
    _model: Any = None

    @property
    def searcher(self):
        if self._searcher is None:
            self._searcher = self.searcher_factory()
        return self._searcher

    @property
    def model(self):
        if self._model is None:
            self._model = self.model_factory()
        return self._model

    def cache_stats(self) -> dict:
        """Call-cache hits and misses of the APIs' model (none if no API needed it)."""
        return self._model.cache.stats() if self._model is not None else {"hits": 0, "misses": 0, "enabled": None}


def _provenance(api: str, arg: str) -> dict:
    return {"api": api, "arg": arg}


class Retrieve:
    name = "retrieve"
    description = "retrieve: <search query> -- Wikipedia passages about the query"

    def __init__(self, ctx: APIContext):
        self.ctx = ctx
        self.k = ctx.params["index"]["top_k"]
        self.price = ctx.params["apis"]["retrieval_price"]

    def __call__(self, arg: str) -> APIResult:
        hits = self.ctx.searcher.search(arg, self.k)
        items = [{"kind": "passage", "doc_id": h["doc_id"], "title": h["title"], "text": h["text"],
                  "source": _provenance(self.name, arg)} for h in hits]
        return APIResult(self.name, arg, items, cost=float(self.price))


_PAIR = re.compile(
    r"(?:^|\n)\s*(?:\d+[.)]\s*)?(?:Q|Question|Instruction)\s*[:.]\s*(?P<q>.+?)\s*\n+\s*(?:A|Answer|Response)\s*[:.]\s*(?P<a>.+?)\s*(?=\n\s*(?:\d+[.)]\s*)?(?:Q|Question|Instruction)\s*[:.]|\n\s*\n|$)",
    re.IGNORECASE | re.DOTALL,
)


def parse_pairs(text: str) -> tuple[list[tuple[str, str]], int]:
    """Instruction-response pairs from model text: (pairs, how many blocks failed to parse)."""
    pairs = [(m["q"].strip(), m["a"].strip()) for m in _PAIR.finditer(text)]
    pairs = [(q, a) for q, a in pairs if q and a and len(q) < 500 and len(a) < 500]
    started = len(re.findall(r"(?:^|\n)\s*(?:\d+[.)]\s*)?(?:Q|Question|Instruction)\s*[:.]", text, re.IGNORECASE))
    return pairs, max(0, started - len(pairs))


class BatchedAPI:
    """Base for APIs that work in batches: a single call is a batch of one."""

    name = ""

    def call_many(self, args: list[str]) -> list[APIResult]:
        raise NotImplementedError

    def __call__(self, arg: str) -> APIResult:
        return self.call_many([arg])[0]


class Demonstrate(BatchedAPI):
    name = "demonstrate"
    description = "demonstrate: <topic> -- example question-answer pairs on the topic, written by a model"

    def __init__(self, ctx: APIContext):
        self.ctx = ctx
        p = ctx.params["apis"]
        self.n, self.max_tokens = p["demonstrate_n"], p["demonstrate_max_tokens"]

    def prompt(self, topic: str) -> str:
        return (f"Write {self.n} short question-and-answer pairs about {topic}. "
                f"Use exactly this format for each pair:\nQ: <question>\nA: <short answer>")

    def call_many(self, args: list[str]) -> list[APIResult]:
        gens = self.ctx.model.generate([self.prompt(a) for a in args], max_new_tokens=self.max_tokens, desc="demonstrate")
        results = []
        for arg, g in zip(args, gens):
            if g.error:
                results.append(failed_request(self.name, arg, g.error))
                continue
            pairs, failed = parse_pairs(g.text)
            items = [{"kind": "demonstration", "instruction": q, "response": a, "source": _provenance(self.name, arg)}
                     for q, a in pairs[: self.n]]
            results.append(APIResult(self.name, arg, items, cost=float(g.cost),
                                     error=f"{failed} pairs did not parse" if failed else None))
        return results


class Answer(BatchedAPI):
    name = "answer"
    description = "answer: <question> -- a QA model answers the question (from retrieved passages)"

    def __init__(self, ctx: APIContext):
        self.ctx = ctx
        p = ctx.params["apis"]
        self.grounded, self.k, self.max_tokens = p["answer_grounded"], p["answer_k"], p["answer_max_tokens"]
        self.price = p["retrieval_price"]

    def call_many(self, args: list[str]) -> list[APIResult]:
        contexts = [self.ctx.searcher.search(a, self.k) if self.grounded else [] for a in args]
        prompts = []
        for arg, hits in zip(args, contexts):
            passages = "\n".join(f"{h['title']}: {h['text']}" for h in hits)
            prompts.append(f"{passages}\n\nAnswer briefly: {arg}" if passages else f"Answer briefly: {arg}")
        gens = self.ctx.model.generate(prompts, max_new_tokens=self.max_tokens, desc="answer")
        results = []
        for arg, hits, g in zip(args, contexts, gens):
            if g.error:
                results.append(failed_request(self.name, arg, g.error))
                continue
            item = {"kind": "qa", "question": arg, "answer": g.text, "sources": [h["doc_id"] for h in hits],
                    "source": _provenance(self.name, arg)}
            cost = g.cost + (self.price if self.grounded else 0)
            results.append(APIResult(self.name, arg, [item] if g.text else [], cost=float(cost),
                                     error=None if g.text else "empty answer"))
        return results



BUILTIN: dict[str, Callable[[APIContext], Any]] = {"retrieve": Retrieve, "demonstrate": Demonstrate, "answer": Answer}


def registry(ctx: APIContext) -> dict[str, Any]:
    """Name -> API: the built-ins, then any from the `ads.apis` entry-point group."""
    apis = {name: make(ctx) for name, make in BUILTIN.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            api = ep.load()(ctx)
        except Exception as e:
            raise AdsError(f"API plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}") from None
        if not getattr(api, "name", None) or not callable(api):
            raise AdsError(f"API plugin {ep.name!r} ({ep.value}) must have a name and be callable")
        apis[api.name] = api
    return apis

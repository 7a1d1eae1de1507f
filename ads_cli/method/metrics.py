"""Scores in [0, 1] from a task's own references: exact, contains, token F1.

Answers and references are normalised the same way (lower case, punctuation and articles
removed, white space folded), as in SQuAD-style evaluation. A task with several references
takes the best score over them.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    text = _PUNCT.sub(" ", str(text).lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def contains(answer: str, reference: str) -> float:
    ref = normalize(reference)
    if not ref:
        return 0.0
    return float(re.search(rf"(?<!\w){re.escape(ref)}(?!\w)", normalize(answer)) is not None)


def f1(answer: str, reference: str) -> float:
    a, r = normalize(answer).split(), normalize(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((collections.Counter(a) & collections.Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


METRIC_FUNCTIONS = {"exact": exact, "contains": contains, "f1": f1}


def score(metric: str, answer: str, reference: Any) -> float:
    """Best score of `answer` over the reference or references."""
    refs = reference if isinstance(reference, list) else [reference]
    fn = METRIC_FUNCTIONS[metric]
    return max((fn(answer, str(r)) for r in refs), default=0.0)

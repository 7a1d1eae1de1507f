"""Tasks and examples: reading an example's text, and loading a task file.

A task is `{id, name, category, metric, observed: [example], heldout: [example]}`; an example
is `{input, reference}`, where `input` is a string or chat messages and `reference` a string or
a list of acceptable answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import AdsError
from ..jsonl import read_jsonl
from ..paths import Paths


def input_text(value: Any) -> str:
    """The text of an example's input: a string, or the contents of a chat message list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value)
    return str(value)


def last_message(value: Any) -> str:
    """The question itself: the last chat message (system prompts are English even in foreign-language tasks)."""
    if isinstance(value, list) and value:
        last = value[-1]
        return str(last.get("content", "")) if isinstance(last, dict) else str(last)
    return input_text(value)


def clip(text: str, n: int) -> str:
    """`text` on one line (whitespace runs folded), cut to `n` characters with "..." when longer."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def references(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def validate_task(record: dict) -> str | None:
    for field, kind in (("id", str), ("name", str), ("metric", str), ("observed", list), ("heldout", list)):
        if not isinstance(record.get(field), kind):
            return f"field {field!r} must be a {kind.__name__}"
    for split in ("observed", "heldout"):
        for example in record[split]:
            if not isinstance(example, dict) or "input" not in example or "reference" not in example:
                return f"every {split} example needs 'input' and 'reference'"
            if not any(ref.strip() for ref in references(example["reference"])):
                return f"every {split} example needs a non-empty reference"
    return None


def load_tasks(path: Path, written_by: str | None = "ads prepare") -> list[dict]:
    """The tasks of a task file. `written_by` names the command that writes it, for the error
    when it is missing; None for a file the user named (it is then simply not found)."""
    path = Path(path)
    if written_by:
        Paths.require(path, written_by)
    elif not path.exists():
        raise AdsError(f"{path}: not found")
    tasks = read_jsonl(path, validate_task)
    if not tasks:
        raise AdsError(f"{path}: zero tasks; run `ads prepare` again with other filters" if written_by else f"{path}: zero tasks")
    return tasks

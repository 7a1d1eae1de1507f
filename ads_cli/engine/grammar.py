"""Constrained decoding for the optimizer: each generated line must start with an allowed word.

`LineGrammar` is the rule; the local engine applies it as a logits processor, a llama.cpp
server as the GBNF grammar `to_gbnf()` writes.
"""

from __future__ import annotations

from typing import Sequence


class LineGrammar:
    """Constrained decoding: each generated line must start with one of `options`; the rest of
    the line is free. The optimizer's lines start with an API name (`retrieve:`), `none` or
    `end`, so a 135M model can no longer invent an API or a prose line, while it still writes
    the argument itself."""

    def __init__(self, options: Sequence[str], first_line_options: Sequence[str] | None = None, terminal: Sequence[str] = ()):
        """`terminal` options (e.g. `none`, `end`) are whole lines: nothing may follow them but a newline."""
        self.options = list(options)
        self.first_line_options = list(first_line_options or options)
        self.terminal = list(terminal)
        self._texts: list[str] | None = None
        self._allowed: dict[tuple[str, bool], list[int] | None] = {}

    def key(self) -> list:
        return [self.options, self.first_line_options, self.terminal]

    def to_gbnf(self) -> str:
        """The same rule as a GBNF grammar, for servers that constrain decoding (llama.cpp)."""

        def alternatives(options: list[str]) -> str:
            quoted = (('"' + o.replace("\\", "\\\\").replace('"', '\\"') + '"') + ("" if o in self.terminal else " rest")
                      for o in options)
            return " | ".join(quoted)

        return (f"root ::= first (\"\\n\" line)*\nfirst ::= {alternatives(self.first_line_options)}\n"
                f"line ::= {alternatives(self.options)}\nrest ::= [^\\n]*\n")

    def allowed(self, tok, line: str, first_line: bool) -> list[int] | None:
        """Token ids that may follow `line` (the current line so far); None means any token."""
        if (line, first_line) in self._allowed:
            return self._allowed[(line, first_line)]
        if self._texts is None:
            self._texts = tok.batch_decode([[i] for i in range(len(tok))])
        options = self.first_line_options if first_line else self.options
        if line in self.terminal and line in options:
            result = [i for i, text in enumerate(self._texts) if text.startswith("\n")] + [tok.eos_token_id]
        elif any(line.startswith(o) for o in options) or not any(o.startswith(line) for o in options):
            result = None
        else:
            result = [i for i, text in enumerate(self._texts) if text and "\n" not in text
                      and any((line + text).startswith(o) or o.startswith(line + text) for o in options)]
        self._allowed[(line, first_line)] = result
        return result


class GrammarProcessor:
    """Masks, per row, every token the grammar does not allow after the row's text so far."""

    def __init__(self, grammar: LineGrammar, tok, start: int):
        self.grammar, self.tok, self.start = grammar, tok, start

    def __call__(self, input_ids, scores):
        for row in range(scores.shape[0]):
            text = self.tok.decode(input_ids[row, self.start:].tolist(), skip_special_tokens=True)
            allowed = self.grammar.allowed(self.tok, text.rsplit("\n", 1)[-1], "\n" not in text)
            if allowed is not None:
                keep = scores[row, allowed].clone()
                scores[row, :] = float("-inf")
                scores[row, allowed] = keep
        return scores

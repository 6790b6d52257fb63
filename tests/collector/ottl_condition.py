"""A small evaluator for the OTTL conditions the gateway's routing table uses.

Only the constructs the configurations use are supported (anything else raises
:class:`UnsupportedCondition`, so a new construct in the YAML fails the tests instead
of being evaluated wrongly):

* paths of the ``log`` context: ``event_name`` and ``attributes["key"]``;
* literals: double-quoted strings and ``nil``;
* comparisons ``==`` and ``!=``; boolean ``not``, ``and``, ``or`` (that precedence) and
  parentheses.

Semantics follow the Collector (contrib v0.130.0):

* ``event_name`` is the log record's EventName, ``""`` when unset (pdata);
* ``attributes["k"]`` is ``nil`` when the key is absent *or* its value is empty
  (pkg/ottl/contexts/internal/ctxutil map.go GetMapValue -> ottlcommon.GetValue,
  which returns nil for pcommon.ValueTypeEmpty); with duplicate keys pdata's
  Map.Get returns the first one;
* ``==`` is true for two nils, for equal strings, for equal booleans and for equal
  numbers (int64 and float64 compare by value); values of different kinds are never
  equal; ``!=`` is its negation (pkg/ottl/compare.go).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class UnsupportedCondition(ValueError):
    """The condition uses a construct this evaluator does not implement."""


#: Stands for an OTLP AnyValue with no value set (pcommon.ValueTypeEmpty).
EMPTY = object()


@dataclass
class LogRecord:
    """The parts of a pdata LogRecord the conditions can read.

    ``attributes`` is a sequence of ``(key, value)`` pairs in wire order (duplicates
    allowed, as on the wire); a value is a str, bool, int, float, bytes, list, dict,
    or :data:`EMPTY`.
    """

    event_name: str = ""
    attributes: Sequence[tuple[str, Any]] = field(default_factory=list)

    def attribute(self, key: str) -> Any:
        """Value of ``key`` as OTTL sees it (None for nil)."""
        for name, value in self.attributes:
            if name == key:  # pcommon.Map.Get: the first match
                return None if value is EMPTY else value
        return None


_TOKEN = re.compile(r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op>==|!=|\(|\)|\[|\])'
                    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*))")

Evaluator = Callable[[LogRecord], Any]


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise UnsupportedCondition(f"cannot read {text[pos:]!r}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            raise UnsupportedCondition(f"expected {value or kind} at token {self.pos}, "
                                       f"got {token}")
        self.pos += 1
        return token[1]

    def at_word(self, word: str) -> bool:
        return self.peek() == ("word", word)

    def parse(self) -> Evaluator:
        expr = self.disjunction()
        if self.peek() is not None:
            raise UnsupportedCondition(f"unexpected {self.peek()}")
        return expr

    def disjunction(self) -> Evaluator:
        terms = [self.conjunction()]
        while self.at_word("or"):
            self.take("word", "or")
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else (lambda r: any(t(r) for t in terms))

    def conjunction(self) -> Evaluator:
        terms = [self.negation()]
        while self.at_word("and"):
            self.take("word", "and")
            terms.append(self.negation())
        return terms[0] if len(terms) == 1 else (lambda r: all(t(r) for t in terms))

    def negation(self) -> Evaluator:
        if self.at_word("not"):
            self.take("word", "not")
            inner = self.negation()
            return lambda r: not inner(r)
        if self.peek() == ("op", "("):
            self.take("op", "(")
            inner = self.disjunction()
            self.take("op", ")")
            return inner
        return self.comparison()

    def comparison(self) -> Evaluator:
        left = self.value()
        op = self.take("op")
        if op not in ("==", "!="):
            raise UnsupportedCondition(f"comparison operator {op!r}")
        right = self.value()
        if op == "==":
            return lambda r: _equal(left(r), right(r))
        return lambda r: not _equal(left(r), right(r))

    def value(self) -> Evaluator:
        token = self.peek()
        if token is None:
            raise UnsupportedCondition("condition ends where a value is expected")
        kind, text = token
        if kind == "string":
            self.pos += 1
            literal = _unquote(text)
            return lambda r: literal
        if kind == "word" and text == "nil":
            self.pos += 1
            return lambda r: None
        if kind == "word" and text == "event_name":
            self.pos += 1
            return lambda r: r.event_name
        if kind == "word" and text == "attributes":
            self.pos += 1
            self.take("op", "[")
            key = _unquote(self.take("string"))
            self.take("op", "]")
            if self.peek() == ("op", "["):
                raise UnsupportedCondition("nested attribute indexes")
            return lambda r: r.attribute(key)
        raise UnsupportedCondition(f"value {text!r}")


def _unquote(text: str) -> str:
    body = text[1:-1]
    if "\\" in body:
        raise UnsupportedCondition(f"escapes in string literal {text}")
    return body


def _equal(left: Any, right: Any) -> bool:
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, str) or isinstance(right, str):
        return isinstance(left, str) and isinstance(right, str) and left == right
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return left == right
    return False  # maps, slices, bytes: never equal to the literals conditions use


def compile_condition(text: str) -> Callable[[LogRecord], bool]:
    """Compile an OTTL condition of the supported subset into a predicate."""
    expr = _Parser(text).parse()
    return lambda record: bool(expr(record))

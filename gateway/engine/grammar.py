"""Output constraints → llama.cpp GBNF grammars, the text `llama_sampler_init_grammar(vocab, text, b"root")` takes.

A constraint (json object, JSON Schema, regex, choice, raw GBNF) becomes grammar text once and is cached by value.
`GrammarBuilder` composes grammars from pieces (a JSON Schema, any object, a literal, a regex) so other modules,
such as tool calling, can build "one of these calls" grammars without writing GBNF by hand.

Every input a client controls is bounded: at most MAX_RULES rules and MAX_GRAMMAR_CHARS of text, repetitions up to
MAX_REPEAT, nesting up to MAX_DEPTH, and `$ref` loops that produce nothing are refused. Every refusal is a
`GatewayError` naming the request field and the construct; nothing is ever fetched.

Regexes go through Python's own parser, so the dialect is Python's; `\\d \\w \\s` are ASCII. Supported: literals,
classes (negated too), `.`, alternation, groups, `* + ? {m,n}` (lazy too), `^`/`$` at the ends. A JSON Schema
`pattern` is searched (unanchored ends take any text); a `regex` constraint must match the whole output.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading

import llama_cpp

from gateway.engine.json_schema_grammar import MAX_DEPTH, MAX_REPEAT, PRIMITIVES, SchemaWalker, quantifier
from gateway.types import Constraint, invalid

try:
    from re import _parser as sre_parse  # Python 3.11+
except ImportError:  # Python 3.10
    import sre_parse  # type: ignore[no-redef]

MAX_RULES = 2000
MAX_GRAMMAR_CHARS = 1_000_000
CACHE_SIZE = 256

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9-]+")
_LITERAL_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CLASS_SPECIALS = set('\\]["^-')
_LAST_CHAR = 0x10FFFF


def _code_point(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02X}" if o <= 0xFF else f"\\u{o:04X}" if o <= 0xFFFF else f"\\U{o:08X}"


def literal(text: str) -> str:
    """A GBNF string literal matching exactly `text`."""
    return '"' + "".join(_LITERAL_ESCAPES.get(c) or (c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF
                                                     else _code_point(c)) for c in text) + '"'


class GrammarBuilder:
    """A grammar under construction. Rule names are made valid and unique, so pieces never clash: two schemas
    with the same `$defs` names get distinct rules. The shared JSON rules are added once, when first used.
    Size limits are refused as errors on `param` (the request field the grammar serves)."""

    def __init__(self, param: str = "grammar"):
        self.param = param
        self._rules: dict[str, str | None] = {}  # reserved names map to None until defined
        self._primitives: list[str] = []
        self._size = 0

    def reserve(self, name: str) -> str:
        """A fresh valid rule name derived from `name`, to `define` later (recursive rules refer to it first)."""
        if len(self._rules) >= MAX_RULES:
            raise invalid(f"`{self.param}`: the grammar would need more than {MAX_RULES} rules; simplify it",
                          self.param)
        stem = _INVALID_NAME_CHARS.sub("-", name).strip("-")[:48] or "rule"
        candidate, n = stem, 1
        while candidate in self._rules or candidate in PRIMITIVES or candidate == "root":
            n += 1
            candidate = f"{stem}-{n}"
        self._rules[candidate] = None
        return candidate

    def define(self, name: str, body: str) -> None:
        self._grow(len(name) + len(body) + 6)
        self._rules[name] = body

    def rule(self, name: str, body: str) -> str:
        """Add a rule under a unique name derived from `name`; returns the name to reference."""
        name = self.reserve(name)
        self.define(name, body)
        return name

    def literal(self, text: str) -> str:
        return literal(text)

    def primitive(self, name: str) -> str:
        """One of the shared rules (json-value, json-string, space, format-date...), with the rules it needs."""
        if name not in self._primitives:
            body, needs = PRIMITIVES[name]
            self._grow(len(name) + len(body) + 6)
            self._primitives.append(name)
            for need in needs:
                self.primitive(need)
        return name

    def json_object(self) -> str:
        """Any JSON object."""
        return self.primitive("json-object")

    def schema(self, schema: object, name: str, param: str) -> str:
        """Rules for one JSON value conforming to `schema` (errors name `param` and the path inside it)."""
        return SchemaWalker(self, schema, name, param).walk()

    def regex(self, pattern: str, name: str, param: str) -> str:
        """A rule for text that fully matches `pattern`."""
        body, _, _ = _Regex(pattern, param, json_string=False).convert()
        return self.rule(name, body)

    def pattern(self, pattern: str, name: str, param: str) -> str:
        """A rule for a JSON string whose text contains a match of `pattern` (JSON Schema's search semantics)."""
        body, starts, ends = _Regex(pattern, param, json_string=True).convert()
        anything = f"{self.primitive('json-char')}*"
        parts = [r'"\""', "" if starts else anything, body, "" if ends else anything, r'"\""',
                 self.primitive("space")]
        return self.rule(name, " ".join(filter(None, parts)))

    def grammar(self, root: str) -> str:
        """The whole grammar text, starting at `root ::= <root>`."""
        rules = [("root", root), *self._rules.items(), *((n, PRIMITIVES[n][0]) for n in self._primitives)]
        return "\n".join(f"{name} ::= {body}" for name, body in rules) + "\n"

    def _grow(self, chars: int) -> None:
        self._size += chars
        if self._size > MAX_GRAMMAR_CHARS:
            raise invalid(f"`{self.param}`: the grammar would be larger than {MAX_GRAMMAR_CHARS} characters; "
                          "simplify it", self.param)


# ---- regular expressions


def _normalized(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, start = [], 0
    for lo, hi in _normalized(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    return out + ([(start, _LAST_CHAR)] if start <= _LAST_CHAR else [])


def _intersection(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return _complement(_complement(a) + _complement(b))


def _class(ranges: list[tuple[int, int]]) -> str:
    """A GBNF character class; written negated when that is the shorter way to say it."""
    def char(o: int) -> str:
        c = chr(o)
        return c if 0x20 < o < 0x7F and c not in _CLASS_SPECIALS else _code_point(c)

    def items(rs: list[tuple[int, int]]) -> str:
        return "".join(char(lo) if lo == hi else f"{char(lo)}-{char(hi)}" for lo, hi in rs)

    if ranges[-1][1] == _LAST_CHAR and _complement(ranges):
        return f"[^{items(_complement(ranges))}]"
    return f"[{items(ranges)}]"


_CATEGORIES = {"DIGIT": [(48, 57)], "WORD": [(48, 57), (65, 90), (95, 95), (97, 122)], "SPACE": [(9, 13), (32, 32)]}
_JSON_UNSAFE = [(0, 0x1F), (34, 34), (92, 92)]
_SHORT_ESCAPES = {8: "b", 9: "t", 10: "n", 12: "f", 13: "r"}
_REFUSED = {"GROUPREF": "a backreference", "GROUPREF_EXISTS": "a conditional group",
            "ASSERT": "a lookahead or lookbehind", "ASSERT_NOT": "a negative lookahead or lookbehind",
            "POSSESSIVE_REPEAT": "a possessive quantifier", "ATOMIC_GROUP": "an atomic group"}
_SUPPORTED_REGEX = ("supported: literals, character classes (negated too, \\d \\w \\s), ., |, groups, "
                    f"* + ? {{m,n}} (lazy too, up to {MAX_REPEAT}), ^ and $ at the ends")


class _Regex:
    """One pattern's GBNF, from a walk over Python's parse of it. In `json_string` mode the text is what
    appears between the quotes of a JSON string, so quotes, backslashes and control characters are escaped."""

    def __init__(self, pattern: str, param: str, json_string: bool):
        self.pattern, self.param, self.json_string = pattern, param, json_string
        self.dotall = False

    def fail(self, what: str) -> Exception:
        return invalid(f"`{self.param}`: the regular expression {self.pattern!r} uses {what}, which a grammar "
                       f"cannot express; {_SUPPORTED_REGEX}", self.param)

    def convert(self) -> tuple[str, bool, bool]:
        """(GBNF text, anchored at the start, anchored at the end)."""
        if not isinstance(self.pattern, str):
            raise invalid(f"`{self.param}`: a regular expression must be a string", self.param)
        try:
            tree = sre_parse.parse(self.pattern)
        except (re.error, RecursionError, OverflowError) as e:
            raise invalid(f"`{self.param}`: {self.pattern!r} is not a valid regular expression: {e}",
                          self.param) from None
        if tree.state.flags & (re.IGNORECASE | re.LOCALE):
            raise self.fail("case-insensitive matching")
        self.dotall = bool(tree.state.flags & re.DOTALL)
        items = list(tree)
        starts = bool(items) and str(items[0][0]) == "AT" and str(items[0][1]) in ("AT_BEGINNING",
                                                                                   "AT_BEGINNING_STRING")
        ends = len(items) > starts and str(items[-1][0]) == "AT" and str(items[-1][1]) in ("AT_END",
                                                                                           "AT_END_STRING")
        text, _ = self.sequence(items[int(starts):len(items) - int(ends)], 0)
        return text, starts, ends

    def sequence(self, items: list, depth: int) -> tuple[str, bool]:
        """(text, can match the empty string); runs of literal characters become one literal."""
        if depth > MAX_DEPTH:
            raise self.fail(f"groups nested more than {MAX_DEPTH} deep")
        parts, nullable, run = [], True, []
        for op, av in items:
            if str(op) == "LITERAL":
                run.append(chr(av))
                continue
            if run:
                parts.append(self.text("".join(run)))
                run, nullable = [], False
            text, empty = self.node(str(op), av, depth)
            parts.append(text)
            nullable = nullable and empty
        if run:
            parts.append(self.text("".join(run)))
            nullable = False
        return " ".join(parts) or '""', nullable

    def node(self, op: str, av, depth: int) -> tuple[str, bool]:
        if op == "NOT_LITERAL":
            return self.chars(_complement([(av, av)])), False
        if op == "ANY":
            return self.chars([(0, _LAST_CHAR)] if self.dotall else _complement([(10, 10)])), False
        if op == "IN":
            return self.chars(self.char_set(av)), False
        if op == "BRANCH":
            options = [self.sequence(list(sub), depth + 1) for sub in av[1]]
            return f"({' | '.join(t for t, _ in options)})", any(e for _, e in options)
        if op == "SUBPATTERN":
            if av[1] & (re.IGNORECASE | re.LOCALE):
                raise self.fail("case-insensitive matching")
            text, empty = self.sequence(list(av[3]), depth + 1)
            return f"({text})", empty
        if op in ("MAX_REPEAT", "MIN_REPEAT"):
            return self.repeat(*av, depth)
        if op == "AT":
            raise self.fail("an anchor or boundary other than ^ at the start and $ at the end")
        raise self.fail(_REFUSED.get(op, f"the construct {op}"))

    def repeat(self, low: int, high: int, sub, depth: int) -> tuple[str, bool]:
        unbounded = high == sre_parse.MAXREPEAT
        if low > MAX_REPEAT or (not unbounded and high > MAX_REPEAT):
            raise self.fail(f"a repetition count above {MAX_REPEAT}")
        text, empty = self.sequence(list(sub), depth + 1)
        if unbounded and empty:
            raise self.fail("an unbounded repetition of something that can match the empty string")
        if high == 0:
            return '""', True
        atomic = len(sub) == 1 and str(sub[0][0]) in ("LITERAL", "IN", "ANY", "NOT_LITERAL", "SUBPATTERN", "BRANCH")
        item = text if atomic else f"({text})"
        return item + quantifier(low, None if unbounded else high), low == 0 or empty

    def char_set(self, items: list) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        negate = False
        for op, av in items:
            op = str(op)
            if op == "NEGATE":
                negate = True
            elif op == "LITERAL":
                ranges.append((av, av))
            elif op == "RANGE":
                ranges.append(tuple(av))
            elif op == "CATEGORY" and str(av).removeprefix("CATEGORY_").removeprefix("NOT_") in _CATEGORIES:
                name = str(av).removeprefix("CATEGORY_")
                base = _CATEGORIES[name.removeprefix("NOT_")]
                ranges.extend(_complement(base) if name.startswith("NOT_") else base)
            else:
                raise self.fail(f"{av} inside a character class")
        ranges = _normalized(ranges)
        return _complement(ranges) if negate else ranges

    def text(self, text: str) -> str:
        return literal(json.dumps(text, ensure_ascii=False)[1:-1] if self.json_string else text)

    def chars(self, ranges: list[tuple[int, int]]) -> str:
        if not self.json_string:
            if not ranges:
                raise self.fail("a character class that matches nothing")
            return _class(ranges)
        safe = _intersection(ranges, _complement(_JSON_UNSAFE))
        options = [_class(safe)] if safe else []
        unsafe = {c for lo, hi in _intersection(ranges, _JSON_UNSAFE) for c in range(lo, hi + 1)}
        options.extend(self.text(c) for c in '"\\' if ord(c) in unsafe)
        short = "".join(letter for c, letter in _SHORT_ESCAPES.items() if c in unsafe)
        if short:
            options.append(f'"\\\\" [{short}]')
        for high in (0, 1):  # \u00XX for the control characters, written with either case of hex digit
            digits = "".join(f"{n:x}{n:X}" if n > 9 else str(n) for n in range(16) if high * 16 + n in unsafe)
            if digits:
                options.append(f'"\\\\u00{high}" [{digits}]')
        if not options:
            raise self.fail("a character class that matches nothing")
        return options[0] if len(options) == 1 else f"({' | '.join(options)})"


# ---- constraints


def constraint_grammar(constraint: Constraint) -> str:
    """The GBNF grammar (with a `root` rule) for an output constraint; cached by kind, value and field."""
    param = constraint.param or constraint.kind
    if constraint.kind == "gbnf":
        text = constraint.value
        if not isinstance(text, str) or not text.strip():
            raise invalid(f"`{param}`: a grammar must be non-empty GBNF text", param)
        if len(text) > MAX_GRAMMAR_CHARS:
            raise invalid(f"`{param}`: the grammar is larger than {MAX_GRAMMAR_CHARS} characters", param)
        return text
    if constraint.kind not in ("json", "json_schema", "regex", "choice"):
        raise invalid(f"`{param}`: unknown constraint kind {constraint.kind!r}", param)
    try:
        value = json.dumps(constraint.value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise invalid(f"`{param}`: the value is not JSON, or is nested too deeply", param) from None
    return _grammar(constraint.kind, value, param)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _grammar(kind: str, value_json: str, param: str) -> str:
    value = json.loads(value_json)
    builder = GrammarBuilder(param)
    if kind == "json":
        root = builder.json_object()
    elif kind == "json_schema":
        root = builder.schema(value, "schema", param)
    elif kind == "regex":
        root = builder.regex(value, "regex", param)
    else:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise invalid(f"`{param}`: choices must be a non-empty list of strings", param)
        root = builder.rule("choice", " | ".join(literal(v) for v in value))
    return builder.grammar(root)


class _LlamaReasons(logging.Handler):
    """Collects what llama.cpp logs on this thread while it parses a grammar (its only way to say why)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(record.getMessage().removeprefix("llama.cpp: ")[:300])


def check_grammar(vocab, text: str, param: str) -> None:
    """Refuse a grammar llama.cpp cannot parse (or that has no `root`), naming `param` and, once
    `init_backend()` routes llama.cpp's log, its reason."""
    if not isinstance(text, str) or not text.strip():
        raise invalid(f"`{param}`: a grammar must be non-empty GBNF text", param)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"`{param}`: the grammar is not valid UTF-8 text", param) from None
    reasons = _LlamaReasons()
    engine_log = logging.getLogger("gateway.engine")
    engine_log.addHandler(reasons)
    try:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, data, b"root")
    finally:
        engine_log.removeHandler(reasons)
    if not sampler:
        why = "; ".join(reasons.lines) or "llama.cpp gave no reason"
        raise invalid(f"`{param}`: the grammar could not be parsed: {why}", param)
    llama_cpp.llama_sampler_free(sampler)

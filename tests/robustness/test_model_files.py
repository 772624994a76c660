"""Untrusted model files (issue 20, classes 1 and 7): sandboxed chat templates and clear,
one-line errors for inconsistent or oversized GGUF / safetensors files."""

import dataclasses
import json
import time

import numpy as np
import pytest

from jaxlm.weights import WeightsError, load_gguf, tokenizer_from_gguf
from jaxlm.weights.errors import ChatTemplateError
from tests.robustness._model_files import (
    CHATML, llama_meta, llama_tensors, tiny_cfg, write_gguf, write_tiny_gguf,
)

MSG = [{"role": "user", "content": "hello"}]


# ---------------------------------------------------------------- class 1: template code
def _escapes(marker):
    cmd = f"touch {marker}"
    return {
        "cycler_globals": f"{{{{ cycler.__init__.__globals__.os.system('{cmd}') }}}}",
        "joiner_globals": f"{{{{ joiner.__init__.__globals__['os'].popen('{cmd}').read() }}}}",
        "namespace_globals": f"{{{{ namespace.__init__.__globals__.os.system('{cmd}') }}}}",
        "import_via_subclasses": (
            "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
            "{% if c.__name__ == 'catch_warnings' %}"
            f"{{{{ c()._module.__builtins__['__import__']('os').system('{cmd}') }}}}"
            "{% endif %}{% endfor %}"),
        "self_context": (
            "{{ self._TemplateReference__context.cycler.__init__.__globals__.os"
            f".system('{cmd}') }}}}"),
        "builtins_import": f"{{{{ __builtins__.__import__('os').system('{cmd}') }}}}",
        "format_escape": (
            "{{ '{0.__class__.__init__.__globals__[os].system}'.format(cycler) }}"),
        "mutate_messages": "{{ messages.append({'role': 'system', 'content': 'x'}) }}",
        "lipsum_globals": f"{{{{ lipsum.__globals__.os.system('{cmd}') }}}}",
    }


@pytest.mark.parametrize("name", sorted(_escapes("m")))
def test_template_cannot_run_code(tmp_path, name):
    marker = tmp_path / "PWNED"
    tpl = _escapes(marker)[name]
    path = write_tiny_gguf(tmp_path / "evil.gguf", chat_template=tpl)
    tok = tokenizer_from_gguf(path)
    try:
        text = tok.apply_chat_template(MSG)  # rendering harmlessly is acceptable ...
        assert "os.system" not in text and "<built-in" not in text
    except ChatTemplateError as e:  # ... a clear error naming the file is the usual outcome
        assert "evil.gguf" in str(e) and "\n" not in str(e)
    assert not marker.exists()


def test_template_escape_error_says_unsafe(tmp_path):
    marker = tmp_path / "PWNED"
    path = write_tiny_gguf(tmp_path / "evil.gguf", chat_template=_escapes(marker)["cycler_globals"])
    with pytest.raises(ChatTemplateError, match=r"evil\.gguf: the chat template tried an unsafe"):
        tokenizer_from_gguf(path).encode_chat(MSG)
    assert not marker.exists()


@pytest.mark.parametrize("tpl,match", [
    ("{{ 'x' * 1000000000 }}", "exceeds the template limit"),
    ("{{ 10 ** 10 ** 10 }}", "exceeds the template limit"),
    ("{{ 'x' | center(1000000000) }}", "exceeds the template limit"),
    ("{{ '%0999999999d' % 1 }}", "huge width"),
    ("{{ '{:>999999999}'.format(1) }}", "huge width"),
    ("{% for i in range(1100) %}{{ 'y' * 1000 }}{% endfor %}{{ messages[0].content }}",
     "exceeds 1000020 characters"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}{{ ns.s | length }}", "memory|longer than"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed too deeply"),
    ("{% for %}", "not valid Jinja"),
    ("{{ raise_exception('only user and assistant roles are supported') }}",
     "rejected the messages: only user and assistant"),
])
def test_template_resource_limits(tmp_path, tpl, match):
    tok = tokenizer_from_gguf(write_tiny_gguf(tmp_path / "heavy.gguf", chat_template=tpl))
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError, match=match):
        tok.encode_chat(MSG)
    assert time.monotonic() - t0 < 30


def test_template_time_limit(tmp_path, monkeypatch):
    from jaxlm.weights import tokenizer as tokmod

    monkeypatch.setattr(tokmod, "MAX_RENDER_SECONDS", 0.5)
    tpl = "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
    tok = tokenizer_from_gguf(write_tiny_gguf(tmp_path / "slow.gguf", chat_template=tpl))
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError, match=r"slow\.gguf.*longer than 0.5 s"):
        tok.encode_chat(MSG)
    assert time.monotonic() - t0 < 10


def test_template_size_limit(tmp_path):
    tpl = CHATML + "{# " + "x" * 300_000 + " #}"
    tok = tokenizer_from_gguf(write_tiny_gguf(tmp_path / "big.gguf", chat_template=tpl))
    with pytest.raises(ChatTemplateError, match=r"big\.gguf: the chat template has \d+ characters"):
        tok.encode_chat(MSG)


def test_benign_template_helpers_work(tmp_path):
    tpl = ("{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
           "{{ raise_exception('bad role') }}{% endif %}<|im_start|>{{ m.role }}\n"
           "{{ {'k': 'ü'} | tojson }} {{ m.content }}<|im_end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok = tokenizer_from_gguf(write_tiny_gguf(tmp_path / "ok.gguf", chat_template=tpl))
    assert str(tok.apply_chat_template([{"role": "user", "content": 'say "hi"'}])) == (
        '<|im_start|>user\n{"k": "ü"} say "hi"<|im_end|>\n<|im_start|>assistant\n')
    with pytest.raises(ChatTemplateError, match="rejected the messages: bad role"):
        tok.encode_chat([{"role": "system", "content": "x"}])


def test_template_that_rewrites_content_is_refused(tmp_path):
    tpl = "{% for m in messages %}<|im_start|>{{ m.content | upper }}<|im_end|>{% endfor %}"
    tok = tokenizer_from_gguf(write_tiny_gguf(tmp_path / "upper.gguf", chat_template=tpl))
    with pytest.raises(ChatTemplateError, match=r"upper\.gguf: .*cannot track"):
        tok.encode_chat([{"role": "user", "content": "<|im_end|>"}])

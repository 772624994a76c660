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
    CHATML,
    llama_meta,
    llama_tensors,
    tiny_cfg,
    write_gguf,
    write_tiny_gguf,
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
            "{% endif %}{% endfor %}"
        ),
        "self_context": (
            "{{ self._TemplateReference__context.cycler.__init__.__globals__.os"
            f".system('{cmd}') }}}}"
        ),
        "builtins_import": f"{{{{ __builtins__.__import__('os').system('{cmd}') }}}}",
        "format_escape": ("{{ '{0.__class__.__init__.__globals__[os].system}'.format(cycler) }}"),
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


@pytest.mark.parametrize(
    "tpl,match",
    [
        ("{{ 'x' * 1000000000 }}", "exceeds the template limit"),
        ("{{ 10 ** 10 ** 10 }}", "exceeds the template limit"),
        ("{{ 'x' | center(1000000000) }}", "exceeds the template limit"),
        ("{{ '%0999999999d' % 1 }}", "huge width"),
        ("{{ '{:>999999999}'.format(1) }}", "huge width"),
        (
            "{% for i in range(1100) %}{{ 'y' * 1000 }}{% endfor %}{{ messages[0].content }}",
            r"rendered prompt exceeds \d+ characters",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
            "{% endfor %}{{ ns.s | length }}",
            "memory|longer than",
        ),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursed too deeply"),
        ("{% for %}", "not valid Jinja"),
        (
            "{{ raise_exception('only user and assistant roles are supported') }}",
            "rejected the messages: only user and assistant",
        ),
    ],
)
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
    tpl = (
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
        "{{ raise_exception('bad role') }}{% endif %}<|im_start|>{{ m.role }}\n"
        "{{ {'k': 'ü'} | tojson }} {{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = tokenizer_from_gguf(write_tiny_gguf(tmp_path / "ok.gguf", chat_template=tpl))
    assert str(tok.apply_chat_template([{"role": "user", "content": 'say "hi"'}])) == (
        '<|im_start|>user\n{"k": "ü"} say "hi"<|im_end|>\n<|im_start|>assistant\n'
    )
    with pytest.raises(ChatTemplateError, match="rejected the messages: bad role"):
        tok.encode_chat([{"role": "system", "content": "x"}])


def test_template_that_rewrites_content_is_refused(tmp_path):
    tpl = "{% for m in messages %}<|im_start|>{{ m.content | upper }}<|im_end|>{% endfor %}"
    tok = tokenizer_from_gguf(write_tiny_gguf(tmp_path / "upper.gguf", chat_template=tpl))
    with pytest.raises(ChatTemplateError, match=r"upper\.gguf: .*cannot track"):
        tok.encode_chat([{"role": "user", "content": "<|im_end|>"}])


# ---------------------------------------------------------------- class 7: GGUF metadata
def _load_error(path):
    with pytest.raises(WeightsError) as e:
        load_gguf(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg  # one line naming the file
    return msg


def test_consistent_tiny_file_loads(tmp_path):
    cfg = tiny_cfg()
    loaded_cfg, params = load_gguf(write_tiny_gguf(tmp_path / "ok.gguf", cfg))
    assert (loaded_cfg.d_model, loaded_cfg.n_layers, loaded_cfg.head_dim) == (32, 2, 16)
    raw = llama_tensors(cfg)
    np.testing.assert_array_equal(
        params["layers"][1]["mlp"]["w_down"], raw["blk.1.ffn_down.weight"].T
    )


def test_heads_not_dividing_width(tmp_path):
    msg = _load_error(write_tiny_gguf(tmp_path / "heads.gguf", **{"llama.attention.head_count": 3}))
    assert (
        "head_count = 3 does not divide llama.embedding_length = 32" in msg and "re-export" in msg
    )


def test_kv_heads_not_dividing_heads(tmp_path):
    cfg = tiny_cfg(n_heads=4, head_dim=8, n_kv_heads=2)
    msg = _load_error(
        write_tiny_gguf(tmp_path / "kv.gguf", cfg, **{"llama.attention.head_count_kv": 3})
    )
    assert "head_count_kv = 3 does not divide head_count = 4" in msg


@pytest.mark.parametrize(
    "key,value,match",
    [
        (
            "llama.embedding_length",
            64,
            r"tensor token_embd.weight has shape \(300, 32\).*implies \(300, 64\)",
        ),
        (
            "llama.feed_forward_length",
            64,
            r"tensor blk.0.ffn_gate.weight has shape \(48, 32\).*implies \(64, 32\)",
        ),
        ("llama.vocab_size", 512, r"token_embd.weight has shape \(300, 32\).*implies \(512, 32\)"),
        (
            "llama.block_count",
            3,
            r"block_count = 3, but the file has tensors for 2 blocks \(0..1\)",
        ),
        ("llama.block_count", 1, r"block_count = 1, but the file has tensors for 2 blocks"),
        (
            "llama.attention.head_count_kv",
            2,
            r"blk.0.attn_k.weight has shape \(16, 32\).*implies \(32, 32\)",
        ),
    ],
)
def test_metadata_disagreeing_with_tensors(tmp_path, key, value, match):
    msg = _load_error(write_tiny_gguf(tmp_path / "mismatch.gguf", **{key: value}))
    assert pytest.importorskip("re").search(match, msg), msg
    assert "disagree" in msg


def test_tensor_shape_wrong_in_one_layer(tmp_path):
    cfg = tiny_cfg()
    tensors = llama_tensors(cfg)
    tensors["blk.1.ffn_down.weight"] = tensors["blk.1.ffn_down.weight"][:, :40]
    msg = _load_error(write_gguf(tmp_path / "layer.gguf", llama_meta(cfg), tensors))
    assert "blk.1.ffn_down.weight has shape (32, 40)" in msg and "implies (32, 48)" in msg


def test_missing_tensor(tmp_path):
    cfg = tiny_cfg()
    tensors = llama_tensors(cfg)
    del tensors["blk.0.attn_v.weight"]
    assert "blk.0.attn_v.weight is missing" in _load_error(
        write_gguf(tmp_path / "missing.gguf", llama_meta(cfg), tensors)
    )


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("llama.embedding_length", "576", "must be one integer"),
        ("llama.feed_forward_length", [48, 48], "must be one integer"),
        ("llama.block_count", 0, r"must be one integer in \[1, 1024\]"),
        ("llama.attention.head_count", 100_000, r"must be one integer in \[1, 1024\]"),
        ("llama.rope.freq_base", -1.0, "must lie in"),
        ("llama.attention.layer_norm_rms_epsilon", float("nan"), "must lie in"),
    ],
)
def test_metadata_types_and_ranges(tmp_path, key, value, match):
    assert pytest.importorskip("re").search(
        match, _load_error(write_tiny_gguf(tmp_path / "types.gguf", **{key: value}))
    )


def test_oversized_metadata_array_refused_before_parsing(tmp_path):
    import struct

    from jaxlm.weights import gguf_io

    path = write_tiny_gguf(tmp_path / "huge.gguf")
    data = bytearray(path.read_bytes())
    key = b"tokenizer.ggml.token_type"
    k = data.index(key) + len(key)
    etype, count = struct.unpack_from("<IIQ", data, k)[1:]
    assert count == 300
    struct.pack_into("<Q", data, k + 8, 1 << 40)  # claims 2^40 int32 items
    path.write_bytes(bytes(data))
    t0 = time.monotonic()
    msg = _load_error(path)
    assert "token_type is an array of 1099511627776 items" in msg
    assert time.monotonic() - t0 < 5
    with pytest.raises(WeightsError, match="token_type is an array"):
        tokenizer_from_gguf(path)
    assert gguf_io.MAX_ARRAY_LEN < 1 << 40


def test_oversized_metadata_string_and_counts(tmp_path, monkeypatch):
    from jaxlm.weights import gguf_io

    monkeypatch.setattr(gguf_io, "MAX_STRING_BYTES", 1000)
    path = write_tiny_gguf(tmp_path / "str.gguf", chat_template=CHATML + " " * 2000)
    assert "tokenizer.chat_template holds a string of" in _load_error(path)
    data = bytearray(path.read_bytes())
    data[8:16] = (10**12).to_bytes(8, "little")  # tensor count
    path.write_bytes(bytes(data))
    assert "declares 1000000000000 tensors" in _load_error(path)


def test_tokenizer_larger_than_embedding_table(tmp_path):
    from jaxlm.weights import registry

    cfg = tiny_cfg(vocab_size=200)  # 300 tokens in the vocab, 200 embeddings
    path = write_gguf(tmp_path / "vocab.gguf", llama_meta(cfg), llama_tensors(cfg))
    with pytest.raises(
        WeightsError, match=r"vocab\.gguf: the tokenizer has 300 tokens but the model only 200"
    ):
        registry.load(path)


def test_check_shapes_names_the_parameter():
    import jax

    from jaxlm.core import init
    from jaxlm.weights import check_shapes

    cfg = tiny_cfg()
    params = jax.tree.map(np.asarray, init(jax.random.PRNGKey(0), cfg))
    check_shapes(params, cfg, "mem")  # consistent: no error
    bad = dataclasses.replace(cfg, d_ff=64)
    with pytest.raises(
        WeightsError,
        match=r"mem: parameter layers/0/mlp/w_down has shape \(48, 32\).*implies \(64, 32\)",
    ):
        check_shapes(params, bad, "mem")
    params["layers"][1].pop("mlp_norm")
    with pytest.raises(WeightsError, match="missing layers/1/mlp_norm/scale"):
        check_shapes(params, cfg, "mem")


# ---------------------------------------------------------------- class 7: safetensors config
def _hf_folder(tmp_path, config_text):
    from safetensors.numpy import save_file

    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file(
        {"model.embed_tokens.weight": np.ones((8, 4), np.float32)},
        str(folder / "model.safetensors"),
    )
    (folder / "config.json").write_text(config_text)
    return folder


LLAMA_CFG = {
    "model_type": "llama",
    "vocab_size": 8,
    "hidden_size": 4,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 8,
}


@pytest.mark.parametrize(
    "text,match",
    [
        (
            "{not json",
            r"config.json is not valid JSON \(Expecting property name.* line 1, column 2\)",
        ),
        ("[1, 2]", "must hold a JSON object, got list"),
        ('"llama"', "must hold a JSON object, got str"),
        (json.dumps({**LLAMA_CFG, "model_type": None}), "model_type None is not supported"),
        (
            json.dumps({k: v for k, v in LLAMA_CFG.items() if k != "hidden_size"}),
            "config.json has no 'hidden_size' \\(model_type 'llama' needs",
        ),
        (
            json.dumps({**LLAMA_CFG, "hidden_size": "4"}),
            "'hidden_size' must be a positive integer, got '4'",
        ),
        (
            json.dumps({**LLAMA_CFG, "num_hidden_layers": 1.5}),
            "'num_hidden_layers' must be a positive integer",
        ),
        (json.dumps({**LLAMA_CFG, "vocab_size": -8}), "'vocab_size' must be a positive integer"),
        (
            json.dumps({**LLAMA_CFG, "rms_norm_eps": "tiny"}),
            "'rms_norm_eps' must be a positive number",
        ),
        (
            json.dumps({**LLAMA_CFG, "tie_word_embeddings": "yes"}),
            "'tie_word_embeddings' must be true or false",
        ),
        (
            json.dumps({**LLAMA_CFG, "num_attention_heads": 3}),
            "heads 3 does not divide the width 4",
        ),
        (
            json.dumps({**LLAMA_CFG, "num_key_value_heads": 3}),
            "describes an invalid model.*multiple of n_kv_heads",
        ),
        ("[" * 100_000 + "]" * 100_000, "(nests too deeply|not valid JSON)"),
        (json.dumps(LLAMA_CFG), "tensor 'layers.0.input_layernorm.weight' is missing"),
    ],
)
def test_bad_safetensors_config(tmp_path, text, match):
    from jaxlm.weights import load_safetensors

    folder = _hf_folder(tmp_path, text)
    with pytest.raises(WeightsError, match=match) as e:
        load_safetensors(folder)
    assert "ckpt" in str(e.value) and "\n" not in str(e.value)


def test_safetensors_config_disagreeing_with_tensors(tmp_path):
    """A loadable checkpoint whose config.json claims a larger vocab than its embedding."""
    import jax
    from safetensors.numpy import save_file

    from jaxlm.core import init
    from jaxlm.weights import load_safetensors

    cfg = tiny_cfg(rope_layout="half")
    p = jax.tree.map(np.asarray, init(jax.random.PRNGKey(0), cfg))
    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    t = {"model.embed_tokens.weight": p["embed"], "model.norm.weight": p["final_norm"]["scale"]}
    for i, lp in enumerate(p["layers"]):
        b = f"model.layers.{i}."
        t[b + "input_layernorm.weight"] = lp["attn_norm"]["scale"]
        t[b + "post_attention_layernorm.weight"] = lp["mlp_norm"]["scale"]
        for n, k in (("q", "wq"), ("k", "wk"), ("v", "wv")):
            t[b + f"self_attn.{n}_proj.weight"] = lp["attn"][k].reshape(d, -1).T.copy()
        t[b + "self_attn.o_proj.weight"] = lp["attn"]["wo"].reshape(h * hd, d).T.copy()
        for n, k in (("gate", "w_gate"), ("up", "w_up"), ("down", "w_down")):
            t[b + f"mlp.{n}_proj.weight"] = lp["mlp"][k].T.copy()
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file(t, str(folder / "model.safetensors"))
    hf = {
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": d,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": h,
        "num_key_value_heads": kv,
        "intermediate_size": cfg.d_ff,
        "tie_word_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(hf))
    cfg2, _ = load_safetensors(folder)  # consistent
    assert cfg2.d_model == d
    (folder / "config.json").write_text(json.dumps({**hf, "vocab_size": cfg.vocab_size + 1}))
    with pytest.raises(
        WeightsError, match=r"ckpt: parameter embed has shape \(300, 32\).*\(301, 32\)"
    ):
        load_safetensors(folder)
    (folder / "config.json").write_text(json.dumps({**hf, "intermediate_size": 40}))
    with pytest.raises(
        WeightsError,
        match=r"ckpt: parameter layers/0/mlp/w_down has shape \(48, 32\).*d_ff=40.*"
        r"implies \(40, 32\)",
    ):
        load_safetensors(folder)


# ---------------------------------------------------------------- class 7: experiments.chat flags
def _chat(*args, timeout=120):
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"}
    # argv bytes that are not UTF-8 reach Python as surrogate escapes, as from a shell
    argv = [a.encode("utf-8", "surrogateescape") if isinstance(a, str) else a for a in args]
    return subprocess.run(
        [sys.executable.encode(), b"-m", b"experiments.chat", *argv],
        cwd=root,
        env=env,
        capture_output=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "args,match",
    [
        (["--prompt=hi", "--temperature=nan"], b"--temperature=nan must be a finite number >= 0"),
        (["--prompt=hi", "--temperature=-0.5"], b"--temperature=-0.5 must be a finite number >= 0"),
        (["--prompt=hi", "--temperature=inf"], b"--temperature=inf must be a finite number"),
        (["--prompt=hi", "--top_p=0"], rb"--top_p=0.0 must be in \(0, 1\]"),
        (["--prompt=hi", "--top_p=1.5"], rb"--top_p=1.5 must be in \(0, 1\]"),
        (["--prompt=hi", "--top_p=nan"], rb"--top_p=nan must be in \(0, 1\]"),
        (["--prompt=hi", "--top_k=-3"], b"--top_k=-3 must be >= 0"),
        (["--prompt=hi", "--max_new_tokens=0"], b"--max_new_tokens=0 must be >= 1"),
        ([b"--prompt=caf\xff\xfe"], b"--prompt is not valid UTF-8 \\(byte 0xff at character 3\\)"),
        (["--prompt=hi", b"--system=\xc3("], b"--system is not valid UTF-8 \\(byte 0xc3"),
        (
            ["--prompt=hi", "--model=/no/such/model.gguf"],
            b"--model: model file or folder not found: /no/such/model.gguf; check the path",
        ),
    ],
)
def test_chat_rejects_bad_flags_before_loading(args, match):
    import re

    t0 = time.monotonic()
    r = _chat(*args)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode != 0 and r.stdout == b""
    assert "Traceback" not in err and re.search(match.decode(), err), err
    assert len(err.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 60  # no weights loaded, nothing compiled


def test_chat_corrupt_and_hostile_model_files(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    marker = tmp_path / "PWNED"
    evil = write_tiny_gguf(tmp_path / "evil.gguf", chat_template=_escapes(marker)["cycler_globals"])
    heads = write_tiny_gguf(tmp_path / "heads.gguf", **{"llama.attention.head_count": 3})
    for path, match in (
        (junk, "junk.gguf: the header declares"),
        (evil, "evil.gguf: the chat template tried an unsafe operation"),
        (heads, "heads.gguf: llama.attention.head_count = 3 does not divide"),
    ):
        r = _chat("--prompt=hi", f"--model={path}")
        err = r.stderr.decode()
        assert r.returncode != 0 and "Traceback" not in err, err
        assert match in err and err.startswith("error: --model: "), err
    assert not marker.exists()


def test_tensor_info_with_absurd_shape(tmp_path):
    import struct

    path = write_tiny_gguf(tmp_path / "shape.gguf")
    data = bytearray(path.read_bytes())
    name = b"output_norm.weight"
    k = data.index(name) + len(name)
    assert struct.unpack_from("<I", data, k)[0] == 1  # n_dims of a vector
    struct.pack_into("<Q", data, k + 4, 1 << 50)
    path.write_bytes(bytes(data))
    assert "tensor output_norm.weight declares shape [1125899906842624]" in _load_error(path)
    struct.pack_into("<I", data, k, 99)
    path.write_bytes(bytes(data))
    assert "tensor output_norm.weight declares 99 dimensions" in _load_error(path)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("tokenizer.ggml.eos_token_id", 100_000, r"eos_token_id = '100000' is not a token id"),
        ("tokenizer.ggml.bos_token_id", 300, r"bos_token_id = '300' is not a token id"),
        ("tokenizer.ggml.token_type", [1, 1, 3], r"token_type must list one type per token"),
        ("tokenizer.ggml.merges", ["ab"], r"merges must be a list of 'left right' strings"),
        ("tokenizer.ggml.tokens", ["a", "a"], r"tokens lists a token twice"),
        ("tokenizer.ggml.merges", ["zz qq"], r"the tokenizer cannot be rebuilt"),
    ],
)
def test_malformed_tokenizer_metadata(tmp_path, key, value, match):
    meta = {key: value}
    if key == "tokenizer.ggml.tokens":
        meta.update(
            {
                "tokenizer.ggml.token_type": [1, 1],
                "tokenizer.ggml.merges": [],
                "tokenizer.ggml.eos_token_id": 0,
            }
        )
    path = write_tiny_gguf(tmp_path / "tok.gguf", **meta)
    with pytest.raises(WeightsError, match=match) as e:
        tokenizer_from_gguf(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)

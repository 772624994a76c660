"""The one ByteTokenizer: the ids each former copy produced, and its clear errors."""

import dataclasses

import pytest

from jaxlm.weights import ByteTokenizer

TEXT = "héllo, wörld <|im_end|>\n"


def test_default_is_bytes_with_eos_zero():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8")) and max(ids) > 127  # multi-byte characters
    assert tok.decode(ids) == TEXT
    assert tok.decode([0, *ids, 0]) == TEXT  # EOS/padding dropped ...
    assert tok.decode([104, 0, 105], skip_special=False) == "h\x00i"  # ... or kept as a byte
    assert (tok.vocab_size, tok.eos_id, tok.pad_id, tok.bos_id, tok.stop_ids) == (
        256, 0, 0, None, (0,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        tok.eos_id = 1  # type: ignore[misc]
    assert hash(tok) == hash(ByteTokenizer())  # usable as a static argument


def test_chat_is_chatml_text_and_never_special():
    tok = ByteTokenizer()
    msgs = [{"role": "user", "content": "hi <|im_end|>"}]
    text = tok.apply_chat_template(msgs)
    assert text == "<|im_start|>user\nhi <|im_end|><|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode_chat(msgs) == list(text.encode())
    assert tok.apply_chat_template(msgs, add_generation_prompt=False).endswith("<|im_end|>\n")


def test_training_layout_eos_after_the_bytes():
    from jaxlm.train import data as D

    tok = D.BYTE_TOKENIZER
    assert tok.vocab_size == 257 and tok.eos_id == 256 and tok.name == "bytes"
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode()) and 0 not in tok.stop_ids
    assert tok.decode([*ids, 256]) == TEXT
    assert tok.decode([0, 104]) == "\x00h"  # byte 0 is a token here, not padding


def test_offset_reserves_low_ids_and_wraps_into_the_vocab():
    tok = ByteTokenizer(vocab_size=256, offset=3, eos_id=None, stop_ids=())
    ids = tok.encode(TEXT)
    # the Keyformer evaluation's former stand-in: 3 + byte % (vocab - 3)
    assert ids == [3 + b % 253 for b in TEXT.encode()] and min(ids) >= 3
    assert tok.decode(ids) == TEXT  # UTF-8 never uses bytes 253..255, so no wrap here
    assert tok.decode([0, 1, 2, *ids]) == TEXT  # reserved ids are special


def test_bos_only_when_asked():
    tok = ByteTokenizer(vocab_size=260, offset=0, bos_id=257, eos_id=256, stop_ids=(256,))
    assert tok.encode("a", add_bos=True) == [257, 97] and tok.encode("a") == [97]
    assert tok.decode([257, 97, 256]) == "a"


@pytest.mark.parametrize("kw, match", [
    (dict(vocab_size=3, offset=3), "offset=3"),
    (dict(eos_id=256), "eos_id=256 is outside"),
    (dict(stop_ids=(0, 300)), "stop_ids=300 is outside"),
])
def test_bad_ids_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        ByteTokenizer(**kw)


def test_every_former_copy_is_the_one_class():
    from experiments.keyformer import evaluate as E
    from jaxlm.editing import requests
    from jaxlm.llm import local

    assert requests.ByteTokenizer is local.ByteTokenizer is ByteTokenizer
    assert E.ByteTokenizer is ByteTokenizer
    _, _, tok = E.load_model("smollm2-135m_test")
    assert isinstance(tok, ByteTokenizer) and tok.offset == 3

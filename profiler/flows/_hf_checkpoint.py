"""An HF LLaMA checkpoint folder of a geometry: random weights plus a minimal tokenizer.

TensorRT-LLM and MLC-LLM both start from an HF folder (``config.json`` + safetensors) and both
load a tokenizer from it (MLC always; trtllm-bench always), so the folder also gets a small
``tokenizer.json``: a ``tokenizers`` WordLevel model over ``vocab`` dummy tokens (``<unk>``,
``<s>``, ``</s>``, then ``t3``, ``t4``, ...). Token ids are all the runtimes need; with random
weights the text is meaningless anyway.

``write_hf_checkpoint`` is pure Python + torch/transformers and runs anywhere; the folder is
cached by geometry fingerprint and dtype, so a sweep writes each shape once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry

log = logging.getLogger(__name__)

SPECIAL = ("<unk>", "<s>", "</s>")
_DTYPES = ("float32", "float16", "bfloat16")


def checkpoint_name(geometry: ModelGeometry, dtype: str = "float16") -> str:
    """Folder name of a geometry's checkpoint: readable sizes plus the geometry fingerprint."""
    g = geometry
    return f"llama-L{g.n_layers}-h{g.hidden}-a{g.n_heads}-kv{g.n_kv_heads}-f{g.intermediate}-v{g.vocab}-{dtype}-{g.fingerprint}"


def tokenizer_json(vocab: int) -> dict:
    """A WordLevel ``tokenizer.json`` with exactly ``vocab`` tokens (ids 0..vocab-1)."""
    if vocab < len(SPECIAL) + 1:
        raise AmoebaError(f"vocab must be > {len(SPECIAL)} for a tokenizer, got {vocab}")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {tok: i for i, tok in enumerate(SPECIAL)}
    words.update({f"t{i}": i for i in range(len(SPECIAL), vocab)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return json.loads(tok.to_str())


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": SPECIAL[0],
        "bos_token": SPECIAL[1],
        "eos_token": SPECIAL[2],
        "model_max_length": 1 << 30,
    }


def write_hf_checkpoint(geometry: ModelGeometry, out_dir: str | Path, dtype: str = "float16", seed: int = 0) -> Path:
    """Write ``config.json``, safetensors weights and the tokenizer files into ``out_dir``.

    Returns ``out_dir``. An existing complete folder (``config.json`` and ``tokenizer.json``
    present and the config matching the geometry) is reused as is.
    """
    if dtype not in _DTYPES:
        raise AmoebaError(f"checkpoint dtype must be one of {_DTYPES}, got {dtype!r}")
    out = Path(out_dir)
    if _complete(out, geometry):
        log.debug("reusing HF checkpoint %s", out)
        return out
    from amoeba_core.model import random_llama

    out.mkdir(parents=True, exist_ok=True)
    model = random_llama(geometry, dtype, seed=seed)
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = 1, 2, 0
    model.save_pretrained(out, safe_serialization=True)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(geometry.vocab)))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"unk_token": SPECIAL[0], "bos_token": SPECIAL[1], "eos_token": SPECIAL[2]}, indent=1))
    log.info("wrote HF checkpoint of %s (%s) to %s", geometry.name, dtype, out)
    return out


def _complete(out: Path, geometry: ModelGeometry) -> bool:
    cfg = out / "config.json"
    if not (cfg.is_file() and (out / "tokenizer.json").is_file()):
        return False
    if not any(out.glob("*.safetensors")):
        return False
    try:
        return ModelGeometry.from_hf_config(cfg).fingerprint == geometry.fingerprint
    except AmoebaError:
        return False

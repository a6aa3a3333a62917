"""Write a physical subnet as an HF folder (plain transformers loads it) or a GGUF file
(llama.cpp loads it).

Nothing half-written: output goes to a temporary sibling and is renamed into place only
when complete.

GGUF notes: the architecture is the one llama.cpp expects for the family (``llama`` for LLaMA
and Mistral, ``qwen2``, ``qwen3``; keys carry that ``<arch>.`` prefix). Tensors use llama.cpp
names (``blk.N.attn_q.bias`` for Qwen2's biases, ``blk.N.attn_q_norm``/``attn_k_norm`` for Qwen3's
q/k norms, ``rope_freqs.weight`` for LLaMA-3.1 RoPE scaling). For the ``llama`` architecture Q and
K rows are permuted from HF's rotate-half RoPE layout to llama.cpp's interleaved layout
(``convert_hf_to_gguf.py``'s ``permute``); qwen2/qwen3 run RoPE in the NEOX layout and are written as is.
llama.cpp's ``qwen2`` graph assumes ``n_heads x head_dim == hidden``; a Qwen2 subnet with fewer
heads is written as the ``llama`` architecture (same biases, permuted rows), which llama.cpp runs.
After width cutting ``hidden / n_heads`` no longer equals the head size, so
``llama.attention.key_length``/``value_length`` are written explicitly. Bias-compensation
biases become ``attn_output.bias``/``ffn_down.bias`` (optional tensors in llama.cpp's LLaMA
graph). A shape with separate widths (``d24-a0.667-m0.750``) needs nothing special: the
extracted model already carries its own head, KV-head and channel counts. Tokenizer keys are copied from the source GGUF when the model came from one;
otherwise a ``gpt2`` BPE tokenizer is written from the HF tokenizer when it has merges, or
``none``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from amoeba_core.errors import AmoebaError
from amoeba_core.model import LoadedModel, smollm2_gguf_path
from amoeba_core.shape import SubnetShape
from amoeba_core.strategy import Strategy
from amoeba_core.subnet import extract_subnet

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

log = logging.getLogger(__name__)

FORMATS = ("hf", "gguf")
Format = Literal["hf", "gguf"]
_SKIP_KEYS = ("GGUF.", "general.architecture", "general.name", "general.size_label", "general.file_type",
              "general.quantization_version", "llama.", "qwen2.", "qwen3.")


def export_subnet(
    loaded: LoadedModel, strategy: Strategy | None, shape: SubnetShape, out: str | Path, fmt: Format = "hf",
    gguf_dtype: Literal["f32", "f16"] = "f16",
) -> Path:
    """Extract ``shape`` and write it to ``out`` (a folder for ``hf``, a ``.gguf`` file for ``gguf``)."""
    if fmt not in FORMATS:
        raise AmoebaError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists():
        raise AmoebaError(f"{out} already exists; refusing to overwrite")
    if loaded.adapters is not None:
        from amoeba_core.smol import merge_for_shape

        sub = merge_for_shape(loaded.model, shape, strategy)  # adapters folded in, plain LLaMA
    else:
        sub = extract_subnet(loaded.model, shape, strategy)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            sub.save_pretrained(tmp)
            loaded.tokenizer.save_pretrained(tmp)
            (tmp / "amoeba_subnet.json").write_text(json.dumps(
                {"shape": shape.key, "layers": list(shape.layers), "width": shape.width,
                 "attn_width": shape.attn_width, "axes": {"attn": shape.axes.attn, "mlp": shape.axes.mlp},
                 "heads": sub.config.num_attention_heads, "kv_heads": sub.config.num_key_value_heads,
                 "intermediate": sub.config.intermediate_size,
                 "parent_fingerprint": loaded.fingerprint, "parent_source": loaded.source,
                 "adapters": loaded.adapters}, indent=1))
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    try:
        write_gguf(sub, loaded, Path(name), gguf_dtype, shape)
        os.replace(name, out)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return out


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _source_gguf(loaded: LoadedModel) -> Path | None:
    if loaded.source == "smollm2-135m":
        return smollm2_gguf_path()
    p = Path(loaded.source)
    return p if p.suffix == ".gguf" and p.is_file() else None


def _copy_tokenizer_keys(w: object, src: Path) -> None:
    import gguf

    r = gguf.GGUFReader(str(src))
    for key, field in r.fields.items():
        if key.startswith(_SKIP_KEYS):
            continue
        vtype = field.types[0]
        val = field.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, val, vtype, sub_type=field.types[-1])  # type: ignore[attr-defined]
        else:
            w.add_key_value(key, val, vtype)  # type: ignore[attr-defined]


def _hf_tokenizer_keys(w: object, loaded: LoadedModel, vocab: int) -> None:
    tok = loaded.tokenizer
    try:
        spec = json.loads(tok.backend_tokenizer.to_str())
    except AttributeError:
        spec = {}
    model = spec.get("model", {})
    merges = model.get("merges") or []
    if model.get("type") == "BPE" and merges:
        inv = {i: t for t, i in model["vocab"].items()}
        for added in spec.get("added_tokens", []):
            inv[added["id"]] = added["content"]
        tokens = [inv.get(i, f"[PAD{i}]") for i in range(vocab)]
        w.add_tokenizer_model("gpt2")  # type: ignore[attr-defined]
        w.add_token_list(tokens)  # type: ignore[attr-defined]
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])  # type: ignore[attr-defined]
        if tok.eos_token_id is not None:
            w.add_eos_token_id(tok.eos_token_id)  # type: ignore[attr-defined]
    else:
        w.add_tokenizer_model("none")  # type: ignore[attr-defined]


def write_gguf(sub: LlamaForCausalLM, loaded: LoadedModel, path: Path, dtype: str, shape: SubnetShape) -> None:
    import gguf
    import numpy as np

    from amoeba_core.geometry import FAMILIES, check_family

    cfg = sub.config
    hd = cfg.head_dim
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    arch = FAMILIES[check_family(cfg.model_type)][2]
    if arch == "qwen2" and nh * hd != cfg.hidden_size:
        # llama.cpp's qwen2 graph sizes q/o by the embedding width; a subnet with fewer heads runs as its llama
        # graph instead, which takes head counts and sizes from the keys and has the same optional q/k/v biases
        log.info("qwen2 subnet with %d heads x %d != hidden %d: written as llama.cpp's llama architecture",
                 nh, hd, cfg.hidden_size)
        arch = "llama"
    # llama.cpp's llama arch applies RoPE to interleaved pairs (HF rows are permuted, as convert_hf_to_gguf.py's
    # LlamaModel does); qwen2/qwen3 use the NEOX (rotate-half) layout, HF's own, so their rows stay as they are.
    permute = arch == "llama"
    if getattr(cfg, "sliding_window", None) and cfg.model_type == "mistral":
        log.warning("Mistral sliding window (%s tokens) is not carried by llama.cpp's llama architecture: "
                    "contexts longer than it will differ from transformers", cfg.sliding_window)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"{loaded.source}:{shape.grid_key}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    w.add_rope_freq_base(float(rope))
    w.add_rope_dimension_count(hd)
    rope_freqs = _rope_scaling(w, cfg, hd)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    src = _source_gguf(loaded)
    if src is not None:
        _copy_tokenizer_keys(w, src)
    else:
        _hf_tokenizer_keys(w, loaded, cfg.vocab_size)

    def arr(t: torch.Tensor, matrix: bool = True) -> np.ndarray:
        a = t.detach().float().cpu().numpy()
        return a.astype(np.float16) if (matrix and dtype == "f16") else a.astype(np.float32)

    sd = sub.state_dict()
    w.add_tensor("token_embd.weight", arr(sd["model.embed_tokens.weight"]))
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", arr(sd[p + "input_layernorm.weight"], False))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", arr(sd[p + "post_attention_layernorm.weight"], False))
        for hf, gg in names.items():
            m = sd[f"{p}{hf}.weight"].detach().float().cpu().numpy()
            bias = sd.get(f"{p}{hf}.bias")
            if gg == "attn_q" and permute:
                m = _permute(m, nh)
                bias = None if bias is None else _bias_perm(bias, nh)
            elif gg == "attn_k" and permute:
                m = _permute(m, nkv)
                bias = None if bias is None else _bias_perm(bias, nkv)
            w.add_tensor(f"blk.{i}.{gg}.weight", m.astype(np.float16) if dtype == "f16" else m.astype(np.float32))
            if bias is not None and (arch != "llama" or bool((bias != 0).any())):
                w.add_tensor(f"blk.{i}.{gg}.bias", arr(bias, False))
        for hf, gg in (("self_attn.q_norm", "attn_q_norm"), ("self_attn.k_norm", "attn_k_norm")):
            if f"{p}{hf}.weight" in sd:
                w.add_tensor(f"blk.{i}.{gg}.weight", arr(sd[f"{p}{hf}.weight"], False))
    w.add_tensor("output_norm.weight", arr(sd["model.norm.weight"], False))
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", arr(sd["lm_head.weight"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _bias_perm(b: torch.Tensor, n_head: int) -> torch.Tensor:
    import torch

    return torch.from_numpy(_permute(b.detach().float().numpy()[:, None], n_head)[:, 0])


def _rope_scaling(w: object, cfg: object, head_dim: int) -> np.ndarray | None:
    """Write the RoPE scaling keys llama.cpp reads; LLaMA-3.1's ``llama3`` scaling becomes the
    ``rope_freqs.weight`` tensor of per-frequency divisors (as convert_hf_to_gguf.py computes it)."""
    import math

    import gguf
    import numpy as np

    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return None
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)  # type: ignore[attr-defined]
        w.add_rope_scaling_factor(float(rope["factor"]))  # type: ignore[attr-defined]
        return None
    if kind != "llama3":
        raise AmoebaError(f"GGUF export supports RoPE scaling default, linear and llama3, not {kind!r}")
    base = float(rope.get("rope_theta", 10000.0))
    factor, low, high = float(rope.get("factor", 8.0)), float(rope.get("low_freq_factor", 1.0)), \
        float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    out = []
    for k in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (k / head_dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)

"""Writing LLaMA GGUF files for the llama.cpp flow.

* :func:`write_random_gguf`: a GGUF of a :class:`ModelGeometry` with random weights (latency does
  not depend on weight values), in ``f16``, ``q8_0`` or ``q4_0``. Tensors are generated and
  written one at a time, so a file of llama2-7b-sized layers never sits in memory whole.
* :func:`cached_random_gguf`: the same, cached on disk by (geometry fingerprint, quant, seed).
* :func:`shallow_gguf`: a copy of a real GGUF keeping only some decoder layers (raw quantised
  bytes are copied unchanged, kept blocks renumbered ``blk.0..``).

Quantisation policy of the random files: every 2-D weight (embedding, attention, MLP, LM head)
is stored in the chosen type; norms stay F32. A matrix whose row length (``in`` features) is not
a multiple of the block size (32) falls back to F16, as ``llama-quantize`` does.
Keys: besides the required ones, ``attention.key_length``/``value_length`` are written because a
width-scaled geometry keeps ``head_dim`` while ``hidden // n_heads`` changes.
"""

from __future__ import annotations

import logging
import os
import typing
from pathlib import Path
from typing import Iterator

import numpy as np

from amoeba_core.cache import cached
from amoeba_core.errors import AmoebaError
from amoeba_core.shape import ModelGeometry
from profiler.flows.options import GgufQuant

log = logging.getLogger(__name__)

QUANTS: tuple[str, ...] = typing.get_args(GgufQuant)  # declared with the flow options
_BLOCK = 32
_INIT_STD = 0.02


def _qtype(quant: str) -> object:
    import gguf

    Q = gguf.GGMLQuantizationType
    table = {"f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
    if quant not in table:
        raise AmoebaError(f"quant must be one of {QUANTS}, got {quant!r}")
    return table[quant]


def _file_type(quant: str) -> int:
    import gguf

    F = gguf.LlamaFileType
    return int({"f16": F.MOSTLY_F16, "q8_0": F.MOSTLY_Q8_0, "q4_0": F.MOSTLY_Q4_0}[quant])


def _tensor_specs(g: ModelGeometry) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, torch-layout shape) of every tensor of a LLaMA GGUF, in file order."""
    q_out, kv_out = g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim
    yield "token_embd.weight", (g.vocab, g.hidden)
    for i in range(g.n_layers):
        b = f"blk.{i}."
        yield b + "attn_norm.weight", (g.hidden,)
        yield b + "attn_q.weight", (q_out, g.hidden)
        yield b + "attn_k.weight", (kv_out, g.hidden)
        yield b + "attn_v.weight", (kv_out, g.hidden)
        yield b + "attn_output.weight", (g.hidden, q_out)
        yield b + "ffn_norm.weight", (g.hidden,)
        yield b + "ffn_gate.weight", (g.intermediate, g.hidden)
        yield b + "ffn_up.weight", (g.intermediate, g.hidden)
        yield b + "ffn_down.weight", (g.hidden, g.intermediate)
    yield "output_norm.weight", (g.hidden,)
    if not g.tie_embeddings:
        yield "output.weight", (g.vocab, g.hidden)


def _storage(shape: tuple[int, ...], quant: str) -> tuple[object, tuple[int, ...], np.dtype]:
    """(ggml type, byte shape, numpy dtype) a tensor of ``shape`` is stored with."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) == 1:
        return Q.F32, shape, np.dtype(np.float32)
    qt = _qtype(quant)
    if qt == Q.F16 or shape[-1] % _BLOCK:
        return Q.F16, shape, np.dtype(np.float16)
    return qt, tuple(gguf.quants.quant_shape_to_byte_shape(shape, qt)), np.dtype(np.uint8)


def _values(name: str, shape: tuple[int, ...], qt: object, seed: int) -> np.ndarray:
    import gguf

    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32)
    # one generator per tensor name: layer i has the same weights at every depth
    rng = np.random.default_rng([seed, *name.encode()])
    a = rng.standard_normal(shape, dtype=np.float32)
    a *= _INIT_STD
    if qt == gguf.GGMLQuantizationType.F16:
        return a.astype(np.float16)
    return gguf.quants.quantize(a, qt)


def _write_header(w: object, g: ModelGeometry, quant: str) -> None:
    w.add_name(g.name or "amoeba-random")
    w.add_context_length(g.max_position)
    w.add_embedding_length(g.hidden)
    w.add_block_count(g.n_layers)
    w.add_feed_forward_length(g.intermediate)
    w.add_head_count(g.n_heads)
    w.add_head_count_kv(g.n_kv_heads)
    w.add_key_length(g.head_dim)
    w.add_value_length(g.head_dim)
    w.add_rope_dimension_count(g.head_dim)
    w.add_layer_norm_rms_eps(g.rms_eps)
    w.add_rope_freq_base(g.rope_theta)
    w.add_vocab_size(g.vocab)
    w.add_file_type(_file_type(quant))
    # minimal SentencePiece-style vocab: unk/bos/eos, then dummy tokens (never decoded)
    w.add_tokenizer_model("llama")
    toks = ["<unk>", "<s>", "</s>"] + [f"<t{i}>" for i in range(3, g.vocab)]
    w.add_token_list(toks[: g.vocab])
    w.add_token_scores([0.0] * g.vocab)
    w.add_token_types(([2, 3, 3] + [1] * g.vocab)[: g.vocab])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


def write_random_gguf(geometry: ModelGeometry, path: str | Path, quant: str = "f16", seed: int = 0) -> Path:
    """Write a LLaMA GGUF of ``geometry`` with random weights to ``path`` (streamed, tensor by tensor)."""
    import gguf

    if geometry.vocab < 3:
        raise AmoebaError("a GGUF vocab needs at least 3 tokens")
    _qtype(quant)
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    _write_header(w, geometry, quant)
    specs = list(_tensor_specs(geometry))
    for name, shape in specs:
        qt, byte_shape, dt = _storage(shape, quant)
        nbytes = int(np.prod(byte_shape)) * dt.itemsize
        w.add_tensor_info(name, byte_shape, dt, nbytes, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape in specs:
        qt, _, _ = _storage(shape, quant)
        w.write_tensor_data(_values(name, shape, qt, seed))
    w.close()
    return path


def cached_random_gguf(geometry: ModelGeometry, quant: str = "f16", seed: int = 0,
                       cache_dir: str | Path | None = None) -> Path:
    """A random-weight GGUF of ``geometry``, written once per (fingerprint, quant, seed) and reused.

    Written and budgeted by :func:`amoeba_core.cache.cached` (atomic, LRU-evicted under the
    cache cap, pinned until :func:`amoeba_core.cache.release`).
    """
    _qtype(quant)
    name = f"random-{geometry.fingerprint}-{quant}-s{seed}.gguf"

    def make(tmp: Path) -> None:
        log.info("writing %s GGUF of %s (%s)", quant, geometry.name, name)
        write_random_gguf(geometry, tmp, quant, seed)

    explicit = cache_dir or os.environ.get("AMOEBA_GGUF_CACHE")
    if explicit:
        return cached(name, make, root=Path(explicit))
    return cached(name, make, namespace="gguf")


def shallow_gguf(src: str | Path, keep_layers: list[int] | tuple[int, ...], out: str | Path) -> Path:
    """Copy the LLaMA GGUF ``src`` keeping only decoder blocks ``keep_layers`` (renumbered from 0).

    Every metadata key is copied (``llama.block_count`` set to the kept count) and every tensor
    keeps its raw type, so a quantised file stays quantised.
    """
    import gguf

    src, out = Path(src), Path(out)
    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    if arch != "llama":
        raise AmoebaError(f"{src.name}: architecture {arch!r} is not 'llama'")
    n_blocks = int(r.fields["llama.block_count"].contents())
    keep = sorted({int(i) for i in keep_layers})
    if not keep or keep[0] < 0 or keep[-1] >= n_blocks:
        raise AmoebaError(f"keep_layers must be a non-empty subset of 0..{n_blocks - 1}, got {list(keep_layers)}")
    renumber = {old: new for new, old in enumerate(keep)}

    w = gguf.GGUFWriter(str(out), arch)
    for field in r.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = len(keep) if field.name == "llama.block_count" else field.contents()
        w.add_key_value(field.name, value, vtype, sub_type=sub)

    kept: list[tuple[str, object]] = []
    for t in r.tensors:
        name = t.name
        if name.startswith("blk."):
            _, idx, rest = name.split(".", 2)
            if int(idx) not in renumber:
                continue
            name = f"blk.{renumber[int(idx)]}.{rest}"
        kept.append((name, t))
    for name, t in kept:
        w.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, t in kept:
        w.write_tensor_data(t.data, tensor_endianess=r.endianess)
    w.close()
    return out

"""Comparing two runtimes' logits with bounds that hold on any x86 CPU.

What is *not* stable across instruction sets: the largest absolute difference. llama.cpp,
ONNX Runtime and TVM pick kernels by CPU feature (AVX2, AVX-512, AMX...), sum in different
orders, and llama.cpp converts activations and the KV cache to f16 on some paths and not on
others. One unlucky logit decides a max-abs bound, so a bound tuned on one CPU fails on the next
(it did: 0.868 against 0.79 on a Xeon after passing on an EPYC).

What is stable: the *relative RMS error* over all logits, ``||got - want|| / ||want - mean(want)||``
(an average over thousands of logits, so one kernel's rounding cannot dominate it), the
correlation of the logits, and the arg-max wherever the reference's top two logits are not a
near-tie. Each test states where its bound comes from:

- fp32 vs fp32 (ONNX Runtime, TVM, llama.cpp with f32 weights): only the summation order and
  vectorised transcendental functions differ. fp32's unit roundoff is 6e-8; a dot product of
  length n accumulates at most ~sqrt(n)·u in RMS, a few hundred for these models, so layer
  outputs differ by ~1e-6 relative. :data:`FP32_REL_RMS` = 1e-4 is two orders of magnitude above that.
- f16 somewhere (f16 GGUF weights, f16 KV cache): the error is dominated by rounding to f16
  (unit roundoff u16 = 2**-11 = 4.9e-4). :func:`f16_weight_error` measures, in PyTorch (whose fp32
  arithmetic is the same on every CPU to ~1e-6), what rounding *only the weights* to f16 does to
  these logits on this input. llama.cpp adds at most two further roundings of the same size (the
  activations fed to f16 dot products, and the f16 KV cache); independent errors add in
  quadrature, so expect about sqrt(3) times the weight-only error. The bound is 4x the measured
  weight-only error — over twice the expected value — plus the fp32 floor.
"""

from __future__ import annotations

import numpy as np

FP32_REL_RMS = 1e-4
U_F16 = 2.0**-11


def _2d(x) -> np.ndarray:  # noqa: ANN001 - torch tensor or array
    a = x.detach().float().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)
    return np.asarray(a, dtype=np.float64).reshape(-1, np.shape(a)[-1])


def rel_rms(got, want) -> float:  # noqa: ANN001
    g, w = _2d(got), _2d(want)
    return float(np.linalg.norm(g - w) / np.linalg.norm(w - w.mean(-1, keepdims=True)))


def assert_logits_match(got, want, bound: float, why: str) -> None:  # noqa: ANN001
    """Relative RMS error below ``bound``; correlation and arg-max consistent with it.

    Arg-max: a position may pick another token only if the reference's logit for that token is
    within ``6 * bound * std(row)`` of the reference's maximum — a near-tie that an error of
    relative size ``bound`` (6 standard deviations of it) can flip; elsewhere the top token must agree.
    """
    g, w = _2d(got), _2d(want)
    assert g.shape == w.shape, (g.shape, w.shape)
    assert np.isfinite(g).all(), "non-finite logits"
    err = rel_rms(g, w)
    assert err <= bound, f"relative RMS error {err:.3g} > bound {bound:.3g} ({why})"
    corr = float(np.corrcoef(g.ravel(), w.ravel())[0, 1])
    assert corr >= 1 - 2 * bound, f"logit correlation {corr:.6f} < {1 - 2 * bound:.6f} ({why})"
    pick = g.argmax(-1)
    gap = w.max(-1) - w[np.arange(len(w)), pick]
    tie = 6 * bound * w.std(-1)
    bad = np.flatnonzero(gap > tie)
    assert bad.size == 0, f"arg-max differs beyond a near-tie at positions {bad.tolist()} ({why})"


def f16_weight_error(model, run) -> float:  # noqa: ANN001
    """Relative RMS error that rounding ``model``'s weights to f16 causes in ``run(model)``'s logits
    (computed in fp32 PyTorch; the model is restored afterwards)."""
    import torch

    with torch.no_grad():
        want = run(model)
        saved = {n: p.detach().clone() for n, p in model.named_parameters()}
        try:
            for p in model.parameters():
                p.copy_(p.half().float())
            got = run(model)
        finally:
            for n, p in model.named_parameters():
                p.copy_(saved[n])
    return rel_rms(got, want)


def extracted_matches_masked(model, shape, strategy, ids, atol: float = 1e-5):  # noqa: ANN001, ANN201
    """The physically extracted subnet of ``shape`` gives the masked full model's logits on ``ids``.

    Returns ``(subnet, its logits)`` for the caller's further checks (parameters, export)."""
    import torch

    from amoeba_core.subnet import extract_subnet, masked_subnet

    sub = extract_subnet(model, shape, strategy)
    with torch.no_grad():
        a = sub(input_ids=ids).logits
        with masked_subnet(model, shape, strategy) as m:
            b = m(input_ids=ids, use_cache=False).logits
    assert torch.allclose(a, b, atol=atol), float((a - b).abs().max())
    return sub, a


def assert_gguf_matches(path, ref, ids, why: str, n_ctx: int = 32) -> None:  # noqa: ANN001
    """llama.cpp's logits of the GGUF file ``path`` on ``ids`` match PyTorch model ``ref``'s.

    Bound: 4x what rounding only the weights to f16 does in PyTorch, plus the fp32 floor (llama.cpp
    keeps its KV cache in f16; see the module docstring). Skips when llama-cpp-python is absent."""
    import pytest
    import torch

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not importable: `make install-all`")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False)
    llm.eval(ids[0].tolist())
    got = np.array(llm.scores[: ids.shape[1]])
    ew = f16_weight_error(ref, lambda m: m(input_ids=ids).logits[0])
    with torch.no_grad():
        want = ref(input_ids=ids).logits[0]
    assert_logits_match(got, want, 4 * ew + FP32_REL_RMS, f"{why}; f16 weight rounding alone: {ew:.3g}")

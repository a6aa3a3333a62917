"""What the model side costs on this host: DP evaluation, width statistics, Stage 2 step.

For random-weight LLaMA geometries of about 135M (SmolLM2-135M), 360M (SmolLM2-360M) and 1B
(Llama-3.2-1B) parameters, on the CPU at 2 torch threads, side by side in one run (the geometries
are interleaved in every repeat, so the host's drift hits all of them alike):

* ``dp_eval``: one depth-DP candidate evaluation = a no-grad forward over the calibration tokens
  ``amoeba select`` uses per candidate by default (4 windows x 256 tokens);
* ``width_stats``: one width-statistics pass = the same forward with hooks summing the squared
  inputs of every MLP down projection and attention output projection (the importance statistic);
* ``stage2_step``: one Stage 2 sandwich step of the library (``amoeba_core.finetune.finetune``:
  k=3 shapes, SMoL LoRA rank 8, in-place distillation, batch 1 x 64 tokens);

each with the peak resident memory above the process's level before it (sampled every 5 ms; a lower
bound: memory the allocator freed earlier and reuses does not show, so a later op can read +0 MiB).
LLaMA2-7B is planned on the meta device for memory only (:func:`amoeba_core.memory.plan_memory`).
A fit ``seconds = a * params * tokens`` per operation (least squares through the origin) gives the
extrapolation to a 7B model, labelled as such. The host's noise: a fixed 1024^2 matmul timed before
every measurement; its spread is reported beside the figures.

    python benchmarks/model_cost.py            # about 10 minutes on 2 cores
    python benchmarks/model_cost.py --quick    # the 135M geometry once (a check that it runs)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amoeba_core.finetune import FinetuneConfig, finetune  # noqa: E402
from amoeba_core.geometry import ModelGeometry  # noqa: E402
from amoeba_core.memory import plan_memory  # noqa: E402
from amoeba_core.model import load_model, random_model, tiny_tokenizer  # noqa: E402
from amoeba_core.strategy import Strategy  # noqa: E402

OUT = Path(__file__).parent / "results" / "model_cost.json"
GEOMETRIES = {
    "135m": dict(hidden=576, n_layers=30, n_heads=9, n_kv_heads=3, intermediate=1536, vocab=49152, tie_embeddings=True),
    "360m": dict(hidden=960, n_layers=32, n_heads=15, n_kv_heads=5, intermediate=2560, vocab=49152, tie_embeddings=True),
    "1b": dict(hidden=2048, n_layers=16, n_heads=32, n_kv_heads=8, intermediate=8192, vocab=128256, tie_embeddings=True),
}
LLAMA2_7B = dict(hidden=4096, n_layers=32, n_heads=32, n_kv_heads=32, intermediate=11008, vocab=32000)
CALIB_TOKENS = (4, 256)  # amoeba select: --calib-windows 4 --calib-seq-len 256 (also --stats-windows 4)
STEP_TOKENS = (1, 64)  # Stage 2 step here: batch 1 x 64 tokens
DP_EVALS_30_LAYERS = 330  # benchmarks/results/dp_work.json: evaluations of the DP, 30 layers, depths 15..30


def peak_rss(fn: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, peak RSS above the level before, MiB) of ``fn()``."""
    proc, peak, stop = psutil.Process(), [0], threading.Event()
    base = proc.memory_info().rss

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    stop.set()
    t.join()
    return dt, max(0, peak[0] - base) / 2**20


def noise_probe() -> float:
    a = torch.ones(1024, 1024)
    t0 = time.perf_counter()
    for _ in range(8):
        a @ a
    return time.perf_counter() - t0


class Subject:
    def __init__(self, name: str, work: Path) -> None:
        self.name, self.geometry = name, ModelGeometry(name=name, **GEOMETRIES[name])
        folder = work / name
        random_model(self.geometry, seed=0).save_pretrained(folder)
        tiny_tokenizer(self.geometry.vocab).save_pretrained(folder)
        self.loaded = load_model(str(folder))
        self.params = self.geometry.n_params()
        self.ids = torch.randint(0, self.geometry.vocab, CALIB_TOKENS)
        n = self.geometry.n_layers
        keep = {n: tuple(range(n)), n * 3 // 4: tuple(range(n * 3 // 4)), n // 2: tuple(range(n // 2))}
        self.strategy = Strategy.trivial(self.loaded.geometry, self.loaded.fingerprint, self.loaded.source,
                                         widths=(1.0, 0.75, 0.5)).with_(depth_layers=keep, metric="test")
        self.work, self.runs = work, 0

    def dp_eval(self) -> None:
        with torch.no_grad():
            self.loaded.model(self.ids)

    def width_stats(self) -> None:
        sums: dict[str, torch.Tensor] = {}
        hooks = []
        for name, mod in self.loaded.model.named_modules():
            if name.endswith(("mlp.down_proj", "self_attn.o_proj")):
                def hook(_m: Any, inp: tuple[torch.Tensor, ...], _out: Any, key: str = name) -> None:
                    x = inp[0].detach().float().pow(2).sum(dim=(0, 1))
                    sums[key] = sums[key] + x if key in sums else x
                hooks.append(mod.register_forward_hook(hook))
        try:
            self.dp_eval()
        finally:
            for h in hooks:
                h.remove()

    def prepare(self) -> None:
        """A fresh copy for Stage 2 (it attaches adapters to the model it trains), made outside the timing."""
        self.tuned = copy.deepcopy(self.loaded)

    def stage2_step(self) -> float:
        self.runs += 1
        times: list[float] = []
        cfg = FinetuneConfig(steps=2, k=3, seq_len=STEP_TOKENS[1], batch=STEP_TOKENS[0], warmup=1, rank=8,
                             checkpoint_every=1000)
        finetune(self.tuned, self.strategy, cfg, self.work / f"{self.name}-ft{self.runs}",
                 on_step=lambda r: times.append(r.seconds))
        return times[-1]  # the second step: the first also builds the adapters' optimizer state


def fit(points: list[tuple[float, float]]) -> dict[str, Any]:
    """seconds = a * x through the origin; relative residuals per point."""
    a = sum(x * y for x, y in points) / sum(x * x for x, _ in points)
    return {"a_seconds_per_param_token": a, "relative_residuals": [round(y / (a * x) - 1, 4) for x, y in points]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(2)
    names = ["135m"] if args.quick else list(GEOMETRIES)
    repeats = 1 if args.quick else args.repeats
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        subjects = [Subject(n, Path(tmp)) for n in names]
        res: dict[str, dict[str, list[float]]] = {s.name: {} for s in subjects}
        noise: list[float] = []
        for rep in range(repeats):
            for s in subjects:
                for op in ("dp_eval", "width_stats", "stage2_step"):
                    if op == "stage2_step":
                        s.prepare()
                    noise.append(noise_probe())
                    fn = getattr(s, op)
                    box: list[float] = []
                    dt, mb = peak_rss(lambda: box.append(fn() or 0.0))
                    sec = box[0] if op == "stage2_step" else dt
                    res[s.name].setdefault(op, []).append(sec)
                    res[s.name].setdefault(op + "_peak_rss_mib", []).append(mb)
                    print(f"rep {rep} {s.name} {op}: {sec:.3f} s, peak +{mb:.0f} MiB", flush=True)
                s.tuned = None
    geo_out, fits = {}, {}
    for s in subjects:
        g: dict[str, Any] = {"params": s.params}
        for op in ("dp_eval", "width_stats", "stage2_step"):
            v = res[s.name][op]
            g[op] = {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "n": len(v),
                     "peak_rss_mib": max(res[s.name][op + "_peak_rss_mib"])}
        geo_out[s.name] = g
    tokens = {"dp_eval": CALIB_TOKENS[0] * CALIB_TOKENS[1], "width_stats": CALIB_TOKENS[0] * CALIB_TOKENS[1],
              "stage2_step": STEP_TOKENS[0] * STEP_TOKENS[1]}
    for op, tok in tokens.items():
        fits[op] = fit([(geo_out[n]["params"] * tok, geo_out[n][op]["median_s"]) for n in geo_out])
    p7 = ModelGeometry(name="llama2-7b", **LLAMA2_7B).n_params()
    dp_evals_7b = round(DP_EVALS_30_LAYERS * (32 / 30) ** 2)
    select_s = dp_evals_7b * fits["dp_eval"]["a_seconds_per_param_token"] * p7 * tokens["dp_eval"] + \
        fits["width_stats"]["a_seconds_per_param_token"] * p7 * tokens["width_stats"]
    stage2_s = 10_000 * fits["stage2_step"]["a_seconds_per_param_token"] * p7 * 128 * 2  # paper-like 2 x 128 tokens
    mem = {w: plan_memory(ModelGeometry(name="llama2-7b", **LLAMA2_7B), torch.bfloat16, batch=1, seq_len=2048,
                          train=True, lora_rank=64, lora_experts=4, grad_checkpointing=w, device="meta",
                          budget_bytes=24 * 2**30)
           for w in (True, False)}
    out = {
        "benchmark": "model_cost", "command": "python benchmarks/model_cost.py" + (" --quick" if args.quick else ""),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                 "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
        "noise": {"probe": "8 x (1024x1024 @ 1024x1024) fp32, timed before every measurement",
                  "median_s": statistics.median(noise), "min_s": min(noise), "max_s": max(noise),
                  "max_over_min": max(noise) / min(noise)},
        "interval": "min-max over repeats (median reported); repeats interleave the geometries",
        "tokens": tokens, "geometries": geo_out, "fit": fits,
        "extrapolation_7b": {
            "label": "extrapolation (computed from the fit, not measured)", "params": p7,
            "dp_evaluations": dp_evals_7b,
            "dp_evaluations_note": f"{DP_EVALS_30_LAYERS} evaluations measured for 30 layers (dp_work.json), "
                                   "scaled by (32/30)^2 for 32 layers",
            "select_hours": select_s / 3600, "stage2_10k_steps_hours": stage2_s / 3600,
            "stage2_note": "10,000 sandwich steps (k=3) of batch 2 x 128 tokens at the fitted cost per param-token",
        },
        "memory_7b": {("with" if w else "without") + "_checkpointing": {
            **p.to_dict(), "needed_gib": p.total_bytes / 2**30, "fits_24gib": p.fits} for w, p in mem.items()},
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["extrapolation_7b"], indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()

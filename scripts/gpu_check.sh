#!/usr/bin/env bash
# GPU check: select, 20 Stage 2 steps and export on CUDA for random-weight 135M- and 1B-parameter
# LLaMA geometries; wall times and peak GPU memory go to benchmarks/results/model_cost_gpu.json.
# Random weights only (a GPU machine may reach no model hub or package registry); latency and
# memory do not depend on weight values.  Usage: scripts/gpu_check.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-${PYTHON:-.venv/bin/python}}"
"$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("error: scripts/gpu_check.sh needs a CUDA GPU; torch sees none (torch %s)" % torch.__version__)
PY
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
OUT=benchmarks/results/model_cost_gpu.json
"$PY" - "$WORK" "$OUT" <<'PY'
import json, platform, subprocess, sys, time
from pathlib import Path
import torch
from amoeba_core.geometry import ModelGeometry
from amoeba_core.model import random_model, tiny_tokenizer

work, out = Path(sys.argv[1]), Path(sys.argv[2])
GEOMETRIES = {  # SmolLM2-135M and Llama-3.2-1B shapes (random weights, byte-level tokenizer)
    "135m": dict(hidden=576, n_layers=30, n_heads=9, n_kv_heads=3, intermediate=1536, vocab=49152, tie_embeddings=True),
    "1b": dict(hidden=2048, n_layers=16, n_heads=32, n_kv_heads=8, intermediate=8192, vocab=128256, tie_embeddings=True),
}
amoeba = [sys.executable, "-m", "amoeba.cli"]

def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(amoeba + args, check=True)
    return round(time.perf_counter() - t0, 2)

results = {}
for name, g in GEOMETRIES.items():
    geo = ModelGeometry(name=name, **g)
    folder = work / name
    model = random_model(geo, dtype="bfloat16", seed=0)
    model.save_pretrained(folder)
    tiny_tokenizer(geo.vocab).save_pretrained(folder)
    del model
    dev = ["--device", "cuda", "--dtype", "bfloat16"]
    strat, ft = work / f"{name}.yaml", work / f"{name}-ft"
    r = {"params": geo.n_params()}
    r["select_s"] = timed(["select", "--model", str(folder), "--out", str(strat), "--widths", "1,0.75,0.5", *dev])
    r["finetune_20_steps_s"] = timed(["finetune", "--model", str(folder), "--strategy", str(strat), "--steps", "20",
                                      "--out", str(ft), "--gradient-checkpointing", *dev])
    d = min(int(k) for k in __import__("yaml").safe_load(strat.read_text())["depth_layers"])
    r["export_s"] = timed(["export", "--strategy", str(strat), "--shape", f"d{d}-w0.75", "--format", "hf",
                           "--out", str(work / f"{name}-export"), "--adapters", str(ft), *dev])
    results[name] = r
    print(name, r, flush=True)
out.write_text(json.dumps({
    "benchmark": "model_cost_gpu", "command": "scripts/gpu_check.sh",
    "host": {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version()},
    "note": "random-weight models, bfloat16; wall time of each CLI command including model load",
    "geometries": results}, indent=2) + "\n")
print("wrote", out)
PY

"""The README's results summary for :mod:`report`: one line per claim, each read from its file in
benchmarks/results/ (a claim whose file or field is missing is left out, never estimated)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from report import RESULTS, ROOT, cell, clean, facts, find, interval_of, makefile_commands, num
BEGIN, END = "<!-- results:begin (python benchmarks/report.py) -->", "<!-- results:end -->"
README = ROOT / "README.md"


def _load(name: str) -> dict[str, Any] | None:
    try:
        d = json.loads((RESULTS / name).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _pct(v: Any) -> str:
    return f"{100 * v:.0f}%" if isinstance(v, (int, float)) else "?"


def _iv(v: Any, f: Callable[[Any], str] = num) -> str:
    iv = interval_of(v)
    return f"{f(iv[0])} [{f(iv[1])}, {f(iv[2])}]" if iv else cell(v)


def _per_flow(rows: Any, field: str) -> str:
    """``flow a%, b%`` for every entry of ``rows`` holding ``field``, runs of a flow in file order."""
    runs: dict[str, list[str]] = {}
    for r in rows if isinstance(rows, list) else []:
        if isinstance(r, dict) and "flow" in r and isinstance(r.get(field), (int, float)):
            runs.setdefault(str(r["flow"]), []).append(_pct(r[field]) + (f" ({r['protocol']})" if r.get("protocol") else ""))
    return "; ".join(f"{f} {', '.join(v)}" for f, v in runs.items())


def _claim_reproducibility(d: dict[str, Any]) -> str | None:
    parts = _per_flow(d.get("results"), "within_5pct_ratio")
    return ("Latency tables reproduce: share of rows within ±5% between two back-to-back profiles of the demo grid, "
            f"each run of a flow in file order: {parts}") if parts else None


def _claim_predictor(d: dict[str, Any]) -> str | None:
    parts = _per_flow(d.get("results"), "offgrid_within_5pct")
    n = next((r.get("offgrid_n") for r in d.get("results", []) if isinstance(r, dict) and "offgrid_n" in r), "?")
    return (f"Predictor off the measured grid: share of {n} held-out shapes within ±5%, each run of a flow in "
            f"file order: {parts}") if parts else None


def _claim_few_shot(d: dict[str, Any]) -> str | None:
    k3 = d.get("summary", {}).get("k3", {})
    if "within_10pct" not in k3:
        return None
    return (f"A new line from 3 measurements: transferred shapes within ±10%, median over {k3['within_10pct'].get('n_lines', '?')} "
            f"held-out lines {_iv(k3['within_10pct'], _pct)}, within ±5% {_iv(k3.get('within_5pct'), _pct)}")


def _claim_search(d: dict[str, Any]) -> str | None:
    best, summ = d.get("best_method"), d.get("summary", {})
    r = summ.get(best) if isinstance(best, str) else None
    if not isinstance(r, dict) or "cost_fraction" not in r:
        return None
    size = d.get("space", {}).get("size", "?")
    return (f"Search cost: {best} reaches 99% of the exhaustive front's hypervolume on {size} shapes with "
            f"{_pct(r['cost_fraction'])} of the exhaustive evaluation tokens, "
            f"{r.get('random_over_method', float('nan')):.1f}x fewer than random search")


def _claim_stage1(d: dict[str, Any]) -> str | None:
    texts = d.get("texts") if isinstance(d.get("texts"), dict) else {}
    settings = [k for t in texts.values() if isinstance(t, dict) for k in t.get("budgets", {})]
    if not settings:
        return None
    pick = next((k for k in settings if "+confirm" in k), settings[-1])  # the rule `amoeba select` uses
    rows = [(name, t["budgets"][pick]) for name, t in texts.items() if pick in t.get("budgets", {})]
    won = [n for n, b in rows if b.get("dp_beats_shortgpt_all_depths") is True]
    lower = ", ".join(f"{n} {b.get('dp_lower_ppl_depths', '?')}/{b.get('depths', '?')}" for n, b in rows)
    return (f"Stage 1 depth, `{pick}` vs ShortGPT: `dp_beats_shortgpt_all_depths` on {len(won)} of {len(rows)} "
            f"held-out texts ({', '.join(won) or 'none'}); depths with lower perplexity: {lower}")


def _claim_query_load(d: dict[str, Any]) -> str | None:
    h = d.get("http", {})
    if "p99_ms" not in h:
        return None
    return (f"Service: `amoeba serve --workers {d.get('workers', '?')}` under {h.get('client', '?')}, "
            f"{h.get('connections', '?')} connections: {num(h.get('throughput_rps', 0))} req/s, p99 {num(h['p99_ms'])} ms, "
            f"{h.get('errors', '?')} errors")


def _claim_stage2(d: dict[str, Any]) -> str | None:
    mean, ci = d.get("mean_perplexity", {}), d.get("mean_perplexity_ci90", {})
    if not mean:
        return None
    parts = [f"{k} {num(v)}" + (f" [{num(ci[k][0])}, {num(ci[k][1])}]" if isinstance(ci.get(k), list) else "")
             for k, v in mean.items()]
    steps = d.get("config", {}).get("steps", "?")
    line = f"Stage 2 ({steps} steps), mean test perplexity over the compared shapes: {'; '.join(parts)}"
    gap = d.get("vs_per_shape_rel") or {}
    if gap:
        line += "; full recipe vs per-shape LoRA: " + ", ".join(f"{n} {100 * g:+.1f}%" for n, g in gap.items())
    if d.get("complete") is False:
        line += f" (partial: not run yet: {', '.join(d.get('not_run', []))})"
    return line


def _claim_peers(d: dict[str, Any]) -> str | None:
    hits = find(d, "amoeba_beats_all_peers")
    if not hits:
        return None
    won = sum(1 for _, v in hits if v is True)
    line = f"Against the peer methods: AmoebaLLM beats every peer (paired intervals) in {won} of {len(hits)} comparisons"
    for key, what in (("amoeba_finetuned_beats_all_peers", "after its one-for-all Stage 2"),
                      ("amoeba_lora_beats_all_peers", "with per-shape LoRA")):
        after = [v for _, v in find(d, key) if v is not None]
        if after:
            line += f"; {what}, against peers with per-shape LoRA: {sum(v is True for v in after)} of {len(after)}"
    return line


def _claim_model_cost(d: dict[str, Any]) -> str | None:
    g, x = d.get("geometries"), d.get("extrapolation_7b")
    if not isinstance(g, dict) or not isinstance(x, dict) or "select_hours" not in x:
        return None
    steps = ", ".join(f"{n} {num(v['stage2_step']['median_s'])} s [{num(v['stage2_step']['min_s'])}, "
                      f"{num(v['stage2_step']['max_s'])}]" for n, v in g.items() if isinstance(v, dict))
    res = d.get("fit", {}).get("stage2_step", {}).get("relative_residuals", [])
    worst = max((abs(r) for r in res), default=None)
    return (f"Model-side cost on this CPU (2 threads): one Stage 2 sandwich step {steps} (median [min, max]); "
            f"fit to params x tokens, worst residual {_pct(worst)}; a 7B model, computed extrapolation: "
            f"`amoeba select` {num(x['select_hours'])} h, 10K-step Stage 2 {num(x['stage2_10k_steps_hours'])} h; "
            f"host noise max/min {num(d.get('noise', {}).get('max_over_min'))}")


CLAIMS: tuple[tuple[str, Callable[[dict[str, Any]], str | None]], ...] = (
    ("reproducibility.json", _claim_reproducibility), ("predictor_accuracy.json", _claim_predictor),
    ("few_shot.json", _claim_few_shot), ("stage1_confirm.json", _claim_stage1), ("search_efficiency_axes_32x256.json", _claim_search),
    ("query_load.json", _claim_query_load), ("stage2_ablation.json", _claim_stage2), ("peers.json", _claim_peers),
    ("model_cost.json", _claim_model_cost))


def summary_lines() -> list[str]:
    made_by = makefile_commands()
    out = ["| claim | command | host |", "|---|---|---|"]
    for name, fn in CLAIMS:
        d = _load(name)
        line = fn(d) if d is not None else None
        if line is None:
            continue
        f = facts(d, name, made_by)  # type: ignore[arg-type]
        cmd = f[0].removeprefix("- command: ").replace("(not recorded in the file; `make bench` writes it with) ", "")
        host = f[1].removeprefix("- host: ")
        out.append(f"| {clean(line, 1000)} ([{name}](docs/results.md#{Path(name).stem})) | {cmd} | {host} |")
    return out


def render_readme(text: str) -> str:
    """``text`` with the block between the markers replaced by :func:`summary_lines` (unchanged without markers)."""
    if BEGIN not in text or END not in text:
        return text
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + "\n" + "\n".join(summary_lines()) + "\n" + END + tail


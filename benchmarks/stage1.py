"""Stage 1 depth selection on SmolLM2: the DP against ShortGPT, drop-last and random layer subsets.

For each depth of ``--depths`` (default 27/24/21/18/15 of 30; full width) and each calibration
budget of ``--calib-windows`` (windows of 256 tokens of the calibration split), four ways to pick
the layers are scored side by side on two held-out texts (the test split's pydoc topics and its
standard-library module documentation: disjoint documents, never seen by any selection) and, with
``--extra-texts`` (default: both), on texts from other sources that no selection and no choice among
selections saw either (``ood-readmes``: the README descriptions in the installed metadata of the
project's core dependencies, :func:`readme_docs`; ``ood-idle``: IDLE's documentation shipped in
idlelib, :func:`idle_docs`; ``ood-licenses``: the license files of the installed distributions,
:func:`license_docs`; ``ood-lmeval``: lm-eval's task READMEs, :func:`lmeval_docs`; ``ood-opticks``: Newton's
*Opticks* as tvm-ffi ships it, :func:`opticks_docs`; versions and text digests are recorded):

* ``dp``        the depth DP of :mod:`amoeba_core.depth` (AmoebaLLM Stage 1) on calibration perplexity
  (``ppl``) or on the KL divergence from the full model's next-token distribution (``kl``, ``--metrics``),
* ``shortgpt``  ShortGPT block influence (1 - cos(h_in, h_out)) on the same calibration windows
  (spread evenly over the calibration split, as `amoeba select` takes them; or, for the
  ``--balanced`` settings, half from each source, as `amoeba select --calib-balance` takes them),
* ``drop_last`` the first ``d`` layers,
* ``random``    ``--random`` (40) uniformly random layer subsets of size ``d`` (seeded).

With several settings, ``val-pick`` (``--val-pick`` windows, 32 by default) is one more selection: per
depth, each method's set (DP and ShortGPT alike) chosen among its sets of all the settings by
perplexity on source-balanced *val* windows, so the choice sees no test text.

Scores are perplexities on ``--test-windows`` windows spread over each text, with 90% bootstrap
intervals over documents (amoeba_core.stats). DP vs ShortGPT on the same windows gets a paired
interval of the difference (``dp - shortgpt``; "not significant" when it contains 0). The random
subsets are scored on ``--random-windows`` of those windows (the cost: 40 subsets x depths x 2
texts), with DP and ShortGPT on the same windows, so ``dp_beats_random_share`` is a paired count.

Per text and DP setting (``<metric>:<windows>``, ``:bal`` appended for source-balanced windows): ``dp_beats_shortgpt_all_depths`` (the paired interval lies below 0 at every
depth where the two pick different layers; a depth where they pick the same layers is a tie and
counts as not beaten), ``dp_not_worse_all_depths`` (ShortGPT never significantly better), and the
per-depth verdicts. Scores are cached in runs/stage1-bench/ (a killed run resumes).

    python benchmarks/stage1.py        # metrics ppl and kl x budgets 1, 2, 4, 8 and 16 windows, and
                                       # ppl:4/8/16 with source-balanced windows, worst:8 (the DP on the
                                       # worse source) and val-pick
                                       # (from nothing: each 16-window DP took ~50 min at 1 thread;
                                       # scoring the 15 selections on one new text ~28 min at 2 threads)
    python benchmarks/stage1.py --extra-texts ''     # the two test texts only
    python benchmarks/stage1.py --settings ppl:1,ppl:2,ppl:4,ppl:8,kl:1,kl:2,kl:4   # explicit settings
    python benchmarks/stage1.py --settings ppl:8:bal,ppl:8:bal+swap --val-pick 0 --out benchmarks/results/stage1_swap.json
                                     # '+swap': the DP's set at each scored depth then improved by swaps on the
                                     # same metric (amoeba_core.depth.swap_refine), side by side with the plain DP;
                                     # '+sigswap': only swaps whose paired interval on calibration excludes 0;
                                     # '+confirm': that interval on 64 source-balanced calibration windows
    python benchmarks/stage1.py --quick              # depths 24/18, budget 1, 4 random subsets
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amoeba_core.data import SOURCES, data_record, source_shares, spread_windows, split_docs  # noqa: E402
from amoeba_core.depth import block_influence, block_influence_layers, drop_last  # noqa: E402
from amoeba_core.errors import AmoebaError  # noqa: E402
from amoeba_core.evaluate import Evaluator, ShapeScore, compare  # noqa: E402
from amoeba_core.model import load_model  # noqa: E402
from amoeba_core.select import SWAP_RULE, Judge, check_depth_metric, select_depth, significant_gain  # noqa: E402
from amoeba_core.shape import SubnetShape  # noqa: E402

from benchmarks._profile_run import loadavg  # noqa: E402
from benchmarks._stage1_texts import EXTRA_TEXTS  # noqa: E402

TEXTS = ("test-topics", "test-stdlib")
SEQ = 256
# '+swap': every lower-scoring swap is taken ("lower"); '+sigswap': only one whose paired 90% interval on the
# calibration windows excludes 0 ("significant"); '+confirm': that interval on 64 source-balanced calibration
# windows instead of the DP's ("confirm", amoeba_core.select's only rule, which beat the other two in
# benchmarks/results/stage1_confirm.json). Suffix -> (rule name recorded in the JSON, judge for select_depth;
# None: the library's rule).
def _take_any_lower(calib: Evaluator) -> None:
    return None


SWAP_RULES: dict[str, tuple[str, Judge | None]] = {"swap": ("lower", _take_any_lower),
                                                   "sigswap": ("significant", significant_gain),
                                                   "confirm": (SWAP_RULE, None)}


def setting_label(metric: str, windows: int, balanced: bool, swap: str = "") -> str:
    """``<metric>:<windows>[:bal][+swap|+sigswap|+confirm]``; ``worst`` is always source-balanced, so it carries no
    ``:bal``."""
    return f"{metric}:{windows}" + (":bal" if balanced and metric != "worst" else "") + (f"+{swap}" if swap else "")


def _ci(s: ShapeScore) -> list[float] | None:
    return None if s.ppl_lo is None else [round(s.ppl_lo, 3), round(s.ppl_hi, 3)]  # type: ignore[arg-type]


def _score(s: ShapeScore) -> dict:
    return {"ppl": round(s.ppl, 3), "ppl_ci90": _ci(s), "top1_acc": round(s.top1_acc, 4), "tokens": s.n_tokens}


def run_dp_worst(loaded, min_depth: int, windows: int, cache: Path) -> tuple[dict[int, tuple[int, ...]], dict, object]:
    """The depth DP on the *worse* of the two sources: ``windows / 2`` calibration windows spread over each
    source's part of the calibration split (the same windows as ``ppl:<windows>:bal``), and a removal set
    scored by ``max over sources of (NLL - full model's NLL)``, i.e. the larger perplexity ratio to the full
    model. A robust objective: a set must hold on both kinds of text, not on their mixture."""
    import torch

    from amoeba_core.depth import dp_depth

    n = loaded.geometry.n_layers
    evs = [Evaluator(loaded, None, split=f"calib-{src}", seq_len=SEQ, cache=cache, spread=True, max_windows=k)
           for src, k in zip(SOURCES, source_shares(windows))]
    full = SubnetShape(tuple(range(n)))
    base = [ev.score(full).nll for ev in evs]

    def many(shapes: list[SubnetShape]) -> list[float]:
        per = [ev.score_many(shapes) for ev in evs]
        return [max(per[i][k].nll - base[i] for i in range(len(evs))) for k in range(len(shapes))]

    r = dp_depth(n, min_depth, metric=lambda sh: many([sh])[0], metric_many=many,
                 is_cached=lambda sh: all(ev.key(sh) in ev._scores for ev in evs))  # noqa: SLF001
    ids = torch.cat([ev.ids for ev in evs])
    print(f"  DP on the worse source's NLL increase with {windows} source-balanced window(s): {r.n_evaluations} "
          f"evaluations ({r.n_cached} cached) in {r.seconds:.0f} s", flush=True)
    return r.layers, {"evaluations": r.n_evaluations, "cached": r.n_cached, "seconds": round(r.seconds, 1),
                      "calib_tokens": int(ids.numel())}, ids


def run_dp(loaded, min_depth: int, windows: int, cache: Path, metric: str, balance: bool = False,
           refine: list[int] | tuple[int, ...] = (), swap: str = "swap",
           ) -> tuple[dict[int, tuple[int, ...]], dict, object]:
    """The depth DP exactly as `amoeba select` runs it (:func:`amoeba_core.select.select_depth`); its layers,
    stats and calibration windows (ShortGPT gets the same ones). Metric ``worst``: :func:`run_dp_worst`.
    ``refine``: depths whose DP set is then improved by swaps on the same metric, taken by the rule
    ``SWAP_RULES[swap]`` (``swap``: ``+swap``, ``+sigswap`` or ``+confirm`` without the plus)."""
    if metric == "worst":
        return run_dp_worst(loaded, min_depth, windows, cache)
    t0 = time.perf_counter()
    refine_rule, judge = SWAP_RULES[swap]
    r, calib = select_depth(loaded, min_depth, SEQ, windows, cache, metric=metric, balance=balance, refine=refine,
                            judge=judge)
    print(f"  DP on calibration {metric} with {windows} {'source-balanced' if balance else 'spread'} window(s): "
          f"{r.n_evaluations} evaluations "
          f"({r.n_cached} cached) in {r.seconds:.0f} s"
          + (f"; swaps ({refine_rule}) at depths {', '.join(map(str, sorted(refine, reverse=True)))} in "
             f"{r.refine_seconds:.0f} s"
             if refine else ""), flush=True)
    stats = {"evaluations": r.n_evaluations, "cached": r.n_cached, "seconds": round(r.seconds, 1),
             "calib_tokens": calib.n_tokens}
    if refine:
        stats["swap"] = {str(d): {**x.record(), "moves": x.moves} for d, x in sorted(r.refined.items(), reverse=True)}
        stats["swap_rule"] = refine_rule
        stats["swap_seconds"] = round(r.refine_seconds, 1)
        stats["seconds_with_swaps"] = round(time.perf_counter() - t0, 1)
    return r.layers, stats, calib.ids


def val_pick(loaded, selections: dict[str, dict], depths: list[int], windows: int, cache: Path) -> dict:
    """Per depth and method (DP, ShortGPT), the set with the lowest perplexity on ``windows`` val windows
    (half from each source) among that method's sets of every setting: model selection on held-out
    text that no selection and no reported number uses (val is disjoint from calib and test)."""
    from amoeba_core.data import balanced_windows

    ids, owner = balanced_windows(loaded.tokenizer, "val", SEQ, windows)
    ev = Evaluator(loaded, None, split="val", windows=ids, window_doc=owner, seq_len=SEQ, cache=cache)
    out: dict = {"dp": {}, "shortgpt": {}, "block_influence": None,
                 "dp_stats": {"val_windows": int(ids.shape[0]), "val_tokens": ev.n_tokens, "from": list(selections),
                              "val_ppl": {}}}
    for method in ("dp", "shortgpt"):
        for d in depths:
            cands = sorted({tuple(sel[method][d]) for sel in selections.values()})
            scores = ev.score_many([SubnetShape(c) for c in cands])
            best = min(range(len(cands)), key=lambda i: scores[i].ppl)
            out[method][d] = cands[best]
            out["dp_stats"]["val_ppl"].setdefault(method, {})[str(d)] = {
                "candidates": len(cands), "picked_ppl": round(scores[best].ppl, 3),
                "from": [k for k, sel in selections.items() if tuple(sel[method][d]) == cands[best]]}
            print(f"  val-pick {method} d{d}: {len(cands)} candidate sets, picked val ppl {scores[best].ppl:.2f} "
                  f"(sets of {', '.join(out['dp_stats']['val_ppl'][method][str(d)]['from'])})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--depths", default="27,24,21,18,15")
    ap.add_argument("--calib-windows", default="1,2,4,8,16",
                    help="DP/ShortGPT calibration budgets (windows of 256 tokens)")
    ap.add_argument("--metrics", default="ppl,kl", help="DP calibration metrics: ppl (perplexity), kl (KL from the full model)")
    ap.add_argument("--test-windows", type=int, default=64,
                    help="windows per held-out text for DP/ShortGPT/drop-last (capped at the text's windows: "
                         "pydoc topics has 61 of 256 tokens, all taken by 64; standard-library docs 142)")
    ap.add_argument("--random", type=int, default=40, help="random layer subsets per depth")
    ap.add_argument("--random-windows", type=int, default=1, help="windows (of the test ones) the random subsets use")
    ap.add_argument("--worst", default="8",
                    help="budgets also run with the DP on the worse source's NLL increase (setting 'worst:<windows>', "
                         "source-balanced windows; :func:`run_dp_worst`); '' for none")
    ap.add_argument("--balanced", default="ppl:4,ppl:8,ppl:16",
                    help="settings '<metric>:<windows>,...' also run with source-balanced calibration windows "
                         "(half from each source, `amoeba select --calib-balance`); '' for none")
    ap.add_argument("--settings", default="",
                    help="explicit DP settings '<metric>:<windows>[:bal][+swap|+sigswap|+confirm],...' "
                         "(e.g. ppl:8,ppl:16:bal+sigswap) "
                         "instead of metrics x budgets and --balanced")
    ap.add_argument("--val-pick", type=int, default=32,
                    help="also 'val-pick': per depth, each method's layer set chosen among its sets of all settings "
                         "above by perplexity on this many source-balanced val windows (0: off)")
    ap.add_argument("--extra-texts", default=",".join(EXTRA_TEXTS),
                    help="also score every selection on these held-out texts from other sources (ood-readmes: the "
                         "installed core dependencies' README descriptions; ood-idle: IDLE's documentation in "
                         "idlelib; ood-licenses: the installed distributions' license files; ood-lmeval: lm-eval's "
                         "task READMEs; ood-opticks: Newton's Opticks as tvm-ffi ships it); '' for none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/stage1.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    depths = sorted({int(d) for d in args.depths.split(",")}, reverse=True)
    budgets = [int(b) for b in args.calib_windows.split(",")]
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    def parse(spec: str, bal: bool = False) -> tuple[str, int, bool, str]:
        body, plus, suffix = spec.strip().partition("+")
        parts = [p.strip() for p in body.split(":")]
        if (len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "bal") or not parts[1].isdigit()
                or (plus and suffix not in SWAP_RULES)):
            raise SystemExit(f"error: a setting is '<metric>:<windows>[:bal][+swap|+sigswap|+confirm]', "
                             f"got {spec!r}")
        return parts[0], int(parts[1]), bal or len(parts) == 3, suffix if plus else ""

    settings = [(m, b, False, "") for m in metrics for b in budgets]
    settings += [parse(x, True) for x in args.balanced.split(",") if x.strip()]
    settings += [("worst", int(x), True, "") for x in args.worst.split(",") if x.strip()]
    if args.settings:
        settings = [parse(x) for x in args.settings.split(",") if x.strip()]
    for m, b, _, swap in settings:
        if swap and m == "worst":
            raise SystemExit("error: +swap refines a DP on ppl or kl, not the benchmark-only worst metric")
        if m != "worst":  # benchmark-only: the DP on the worse source (run_dp_worst; always source-balanced)
            check_depth_metric(m)
        else:
            try:
                source_shares(b)  # the split its windows need, checked before the model loads
            except AmoebaError as e:
                raise SystemExit(f"error: worst:{b}: {e}") from None
    extra = [x.strip() for x in args.extra_texts.split(",") if x.strip()]
    unknown = [x for x in extra if x not in EXTRA_TEXTS]
    if unknown:
        raise SystemExit(f"error: unknown --extra-texts {unknown}; known: {', '.join(EXTRA_TEXTS)}")
    if args.quick:
        depths, settings, args.random, args.test_windows = [24, 18], [(metrics[0], 1, False, "")], 4, 2
        args.out = args.out.with_name("stage1_quick.json")
    t0, load0 = time.perf_counter(), loadavg()
    loaded = load_model(args.model)
    n = loaded.geometry.n_layers
    bad = [d for d in depths if not 1 <= d < n]
    if bad:
        raise SystemExit(f"error: depths {bad} are not in 1..{n - 1}")
    cache_dir = REPO / "runs/stage1-bench"
    rng = random.Random(args.seed)
    randoms = {d: [tuple(sorted(rng.sample(range(n), d))) for _ in range(args.random)] for d in depths}

    selections: dict[str, dict] = {}  # "<metric>:<budget>[:bal]" -> layers per method
    for metric, b, bal, swap in settings:
        layers, stats, calib_ids = run_dp(loaded, min(depths), b, cache_dir / "dp_scores.jsonl", metric, bal,
                                          refine=depths if swap else (), swap=swap or "swap")
        influence = block_influence(loaded, calib_ids)
        selections[setting_label(metric, b, bal, swap)] = {"dp": {d: layers[d] for d in depths},
                                       "shortgpt": block_influence_layers(influence, depths),
                                       "dp_stats": stats, "block_influence": [round(x, 5) for x in influence]}
    if args.val_pick and len(selections) > 1:
        selections["val-pick"] = val_pick(loaded, selections, depths, args.val_pick, cache_dir / "val_scores.jsonl")
    last = drop_last(n, depths)

    held_out = {text: (split_docs(text), None) for text in TEXTS}
    for name in extra:
        docs, record = EXTRA_TEXTS[name]()
        if docs:
            held_out[name] = (docs, record)
        else:
            print(f"  no {name} text here: {record['what']}", flush=True)
    texts = {}
    for text, (docs, source) in held_out.items():
        ids, owner = spread_windows(loaded.tokenizer, docs, SEQ, args.test_windows)
        ev = Evaluator(loaded, None, split=text, windows=ids, window_doc=owner, seq_len=SEQ,
                       cache=cache_dir / "test_scores.jsonl")
        k = min(args.random_windows, int(ids.shape[0]))
        pick = [round(i * (int(ids.shape[0]) - 1) / max(1, k - 1)) for i in range(k)] if k > 1 else [0]
        ev_small = Evaluator(loaded, None, split=text, windows=ids[pick], window_doc=[owner[i] for i in pick],
                             seq_len=SEQ, cache=cache_dir / "test_scores.jsonl")
        per_budget = {}
        for b, sel in selections.items():
            rows = []
            for d in depths:
                shapes = {"dp": SubnetShape(sel["dp"][d]), "shortgpt": SubnetShape(sel["shortgpt"][d]),
                          "drop_last": SubnetShape(last[d])}
                sc = dict(zip(shapes, ev.score_many(list(shapes.values()))))
                pdiff = compare(sc["dp"], sc["shortgpt"], "ppl")
                same = shapes["dp"].layers == shapes["shortgpt"].layers
                rnd = ev_small.score_many([SubnetShape(x) for x in randoms[d]])
                small = dict(zip(("dp", "shortgpt"), ev_small.score_many([shapes["dp"], shapes["shortgpt"]])))
                rppl = sorted(s.ppl for s in rnd)
                row = {
                    "depth": d,
                    **{m: {**_score(sc[m]), "layers": list(shapes[m].layers)} for m in shapes},
                    "dp_minus_shortgpt": {"ppl_diff": round(pdiff.diff.value, 3),
                                          "ci90": [round(pdiff.diff.lo, 3), round(pdiff.diff.hi, 3)],
                                          "verdict": "same layers" if same else pdiff.verdict(True, ("dp", "shortgpt"))},
                    "random": {"n": len(rnd), "tokens": rnd[0].n_tokens if rnd else 0,
                               "ppl_min": round(rppl[0], 2), "ppl_median": round(rppl[len(rppl) // 2], 2),
                               "ppl_max": round(min(rppl[-1], 1e12), 2),
                               "dp_ppl_same_tokens": round(small["dp"].ppl, 3),
                               "shortgpt_ppl_same_tokens": round(small["shortgpt"].ppl, 3),
                               "dp_beats_random_share": round(sum(small["dp"].ppl < x for x in rppl) / len(rppl), 3)},
                }
                rows.append(row)
                print(f"  {text} budget {b} d{d}: dp {sc['dp'].ppl:.2f} shortgpt {sc['shortgpt'].ppl:.2f} "
                      f"drop_last {sc['drop_last'].ppl:.3g} random median {row['random']['ppl_median']:.3g}  "
                      f"dp-shortgpt {pdiff.diff.value:+.2f} [{pdiff.diff.lo:+.2f}, {pdiff.diff.hi:+.2f}] "
                      f"{row['dp_minus_shortgpt']['verdict']}  (load {loadavg()})", flush=True)
            per_budget[str(b)] = {
                "rows": rows,
                "dp_beats_shortgpt_all_depths": all(r["dp_minus_shortgpt"]["verdict"] == "dp better" for r in rows),
                "dp_not_worse_all_depths": all(r["dp_minus_shortgpt"]["verdict"] != "shortgpt better" for r in rows),
                "dp_lower_ppl_depths": sum(r["dp"]["ppl"] < r["shortgpt"]["ppl"] for r in rows),
                "depths": len(rows),
            }
        texts[text] = {"tokens": ev.n_tokens, "documents": len(set(owner)), "random_tokens": ev_small.n_tokens,
                       **({"source": source} if source else {}),
                       "budgets": per_budget}

    result = {
        "benchmark": "stage1",
        "command": " ".join(["python", "benchmarks/stage1.py", *(shlex.quote(a) for a in sys.argv[1:])]),
        "model": loaded.source,
        "fingerprint": loaded.fingerprint,
        "depths": depths,
        "calib_windows": sorted({s[1] for s in settings}),
        "dp_metrics": sorted({s[0] for s in settings}),
        "settings": [setting_label(*s) for s in settings],
        "budget_key": "<DP metric>:<calibration windows>[:bal]; metric worst: the larger of the two sources' NLL increase over the full model, on source-balanced windows; windows spread over the calibration split (about 31% "
                      "pydoc topics, 69% standard-library docs by characters) or, with ':bal', half from each source; "
                      "ShortGPT uses the same windows (its layers do not depend on the metric)",
        "seq_len": SEQ,
        "threads": args.threads,
        "data": data_record(seq_len=SEQ, windows=args.test_windows),
        "interval": "90% bootstrap (amoeba_core.stats) over documents (>= 8) or windows; paired for dp - shortgpt",
        "selections": {str(b): {"dp_stats": s["dp_stats"], "block_influence": s["block_influence"],
                                "dp_layers": {str(d): list(v) for d, v in s["dp"].items()},
                                "shortgpt_layers": {str(d): list(v) for d, v in s["shortgpt"].items()}}
                       for b, s in selections.items()},
        "texts": texts,
        "summary": {text: {b: {k: v for k, v in r.items() if k != "rows"} for b, r in t["budgets"].items()}
                    for text, t in texts.items()},
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
        "seconds": round(time.perf_counter() - t0, 1),
        "quick": args.quick,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for text, t in result["summary"].items():
        for b, s in t.items():
            print(f"{text} DP {b} window(s): DP beats ShortGPT at all depths: {s['dp_beats_shortgpt_all_depths']}; "
                  f"not worse at all: {s['dp_not_worse_all_depths']}; lower ppl at {s['dp_lower_ppl_depths']}/{s['depths']}")
    print(f"-> {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()

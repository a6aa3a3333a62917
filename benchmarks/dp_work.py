"""Layer applications of the depth DP: candidates one at a time vs shared layer histories.

Replays the DP on the scores a finished ``amoeba select`` recorded (its ``dp_scores.jsonl``,
next to the strategy in ``.<name>.cache-<fingerprint>/``) and counts the decoder-layer
applications each way: one at a time, a candidate runs every kept layer after the visited one
(from the memoised prefix); together (``Evaluator.score_many``), candidates of a step that
applied the same layers so far share one state, so a layer runs once per distinct history.
Counts only (no timing): they depend on nothing but the DP's picks.

    python benchmarks/dp_work.py runs/smollm2/.strategy.cache-<fp>/dp_scores.jsonl --min-depth 15
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amoeba_core.shape import SubnetShape  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "dp_work.json"


def count(ppl: dict[str, float], n: int, min_depth: int) -> dict[str, int]:
    m_max = n - min_depth
    visit = list(range(n - 2, -1, -1))

    def key(removed: frozenset[int]) -> str:
        return SubnetShape(tuple(i for i in range(n) if i not in removed)).key

    scored = {frozenset(): ppl[key(frozenset())]}
    prev = {0: frozenset()}
    one = shared = 0
    for t in range(1, n):
        layer = visit[t - 1]
        new = [c for c in dict.fromkeys(prev[m - 1] | {layer} for m in range(1, min(t, m_max) + 1)) if c not in scored]
        histories = set()
        for c in new:
            suffix = [i for i in range(layer + 1, n) if i not in c]
            one += len(suffix)
            histories.update(tuple(suffix[:j]) for j in range(1, len(suffix) + 1))
            scored[c] = ppl[key(c)]
        shared += len(histories)
        cur = {0: frozenset()}
        for m in range(1, min(t, m_max) + 1):
            take = prev[m - 1] | {layer}
            cur[m] = prev[m] if m <= t - 1 and m in prev and scored[prev[m]] <= scored[take] else take
        prev = cur
    return {"evaluations": len(scored) - 1, "layer_applications_one_at_a_time": one,
            "layer_applications_shared": shared, "ratio": round(one / shared, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scores", type=Path)
    ap.add_argument("--n-layers", type=int, default=30)
    ap.add_argument("--min-depth", type=int, default=15)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    ppl = {}
    for line in args.scores.read_text().splitlines():
        row = json.loads(line)
        ppl[row["key"].split("|")[1]] = row["ppl"]
    res = {"n_layers": args.n_layers, "min_depth": args.min_depth, **count(ppl, args.n_layers, args.min_depth)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()

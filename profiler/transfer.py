"""Few-shot latency tables: a new (device, flow, variant, threads) line from K measurements.

A *line* is everything that changes latency besides the shape: device, flow, variant (dtype or
quant), runtime threads — for one model geometry, phase, prompt length and batch. Every line
already measured in the store is a row of a matrix ``Y[line, shape] = log(ms)`` over the shapes
all of them measured. A new line gets K measurements; the rest of its row is *transferred*.

The model (why this one)
------------------------
Lines differ mostly by a level (a faster device or a smaller dtype scales every shape) and by a
few ways of *bending* the profile: how much the fixed part (embedding, LM head, per-step
overhead) weighs against the layers, how well narrow widths use the runtime's kernels, how a
second thread helps small matmuls. In log space the level is one additive constant, and the
bends of the known lines span a low-dimensional subspace. So::

    log ms_new(s) = b + mu(s) + sum_k a_k v_k(s) + e(s)

``mu`` is the mean of the row-centred known lines, ``v_k`` the principal directions (SVD of the
row- and column-centred matrix), ``b`` the new line's level (flat prior) and ``a_k`` its
coordinates, with the prior ``a_k ~ N(0, S_k^2 / (n - 1))`` — the spread of the known lines'
own coordinates (probabilistic PCA). ``e`` is what the known lines cannot express plus timing
noise; its variance comes from leaving each known line out and fitting it from the others with
every shape observed. The K measurements give the Gaussian posterior of ``(b, a)`` in closed
form (ridge regression whose penalty is that prior), so:

* K = 1 fixes the level only; the bends stay at the prior mean (the average profile): a
  profile-scaled-by-one-measurement, but using the profile of real lines, not a roofline;
* each further measurement buys the coordinates the data can support, no more: small
  components stay shrunk, so K = 3 does not over-fit 9 components to 3 numbers;
* every transferred row has a predictive variance ``x_s' Sigma_post x_s + sigma_e^2``.

Which K shapes: greedily the shape that most reduces the summed predictive variance over every
shape of the table (I-optimal design; the posterior covariance does not depend on the values, so
the choice is made before anything is timed). Shapes already measured for the line count first.

Intervals: ``exp(mean ± z * sd)`` with ``z`` calibrated by running the whole procedure (choose K
shapes, "measure" them, transfer the rest) on each known line left out in turn: ``z`` is the
90th percentile of the standardised residuals (``1.645`` when fewer than 3 lines exist). They
are 90% intervals when the new line resembles the known ones as they resemble each other; a line
unlike every known one (a GPU transferred from CPUs) can fall outside them — measure it more.

Alternatives compared in ``benchmarks/few_shot.py``: the roofline of each shape scaled by one
measurement (the roofline's profile is the same for every CPU line of a device, so it cannot
know that a quantised kernel or a second thread changes the depth/width trade-off), and the
sparse plan (:func:`profiler.predict.sparse_depths` x all widths, 12 measurements of a 20-shape
grid, fitted by :class:`profiler.predict.LatencyPredictor`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from amoeba_core.errors import AmoebaError
from profiler._lines import Line, LineKey, Shape, Transferred, common_shapes, line_point, select_references

log = logging.getLogger(__name__)

LEVEL = 0.90
DEFAULT_NOISE = 0.05  # log-ms noise assumed when fewer than two known lines exist
MIN_NOISE = 0.01  # never claim less than ~1% noise on a transferred row


# -- the model ---------------------------------------------------------------------------------


@dataclass
class TransferModel:
    """The low-rank model of the known lines (see the module docstring)."""

    shapes: list[Shape]
    mu: np.ndarray  # (m,) mean row-centred log latency
    components: np.ndarray  # (r, m) principal directions
    prior_var: np.ndarray  # (r,) variance of the known lines' coordinates
    noise_var: float
    references: list[LineKey] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return len(self.prior_var)

    # design matrix: column 0 the level, then the components
    @property
    def X(self) -> np.ndarray:
        return np.column_stack([np.ones(len(self.shapes)), self.components.T])

    def _prior_precision(self) -> np.ndarray:
        return np.diag(np.concatenate([[1e-8], 1.0 / self.prior_var]))

    @classmethod
    def fit(cls, lines: Sequence[Line], shapes: Sequence[Shape] | None = None,
            noise_var: float | None = None) -> TransferModel:
        if not lines:
            raise AmoebaError("no known line to transfer from")
        shapes = list(shapes) if shapes is not None else common_shapes(lines)
        if not shapes:
            raise AmoebaError("the known lines have no measured shape in common")
        Y = np.log(np.array([[ln.ms[s] for s in shapes] for ln in lines], dtype=float))
        R = Y - Y.mean(axis=1, keepdims=True)  # remove each line's level
        mu = R.mean(axis=0)
        n = len(lines)
        if n >= 2:
            _, S, Vt = np.linalg.svd(R - mu, full_matrices=False)
            keep = S > 1e-6 * max(S[0], 1e-12)
            comps, var = Vt[keep], S[keep] ** 2 / (n - 1)
        else:
            comps, var = np.zeros((0, len(shapes))), np.zeros(0)
        model = cls(shapes, mu, comps, var, DEFAULT_NOISE**2, [ln.key for ln in lines])
        if noise_var is not None:
            model.noise_var = noise_var
        elif n >= 2:
            model.noise_var = max(_loo_noise(lines, shapes), MIN_NOISE**2)
        return model

    # -- posterior -----------------------------------------------------------------------------
    def _index(self, shape: Shape) -> int:
        try:
            return self.shapes.index(shape)
        except ValueError:
            raise AmoebaError(f"shape d{shape[0]}-w{shape[1]:.3f} is not one the known lines measured") from None

    def posterior_cov(self, observed: Iterable[Shape]) -> np.ndarray:
        idx = [self._index(s) for s in observed]
        Xo = self.X[idx]
        return np.linalg.inv(self._prior_precision() + Xo.T @ Xo / self.noise_var)

    def posterior(self, observed: dict[Shape, float]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of log ms at every shape, given measured ms at some."""
        if not observed:
            raise AmoebaError("a transfer needs at least one measurement of the new line")
        idx = [self._index(s) for s in observed]
        y = np.log(np.array(list(observed.values()), dtype=float)) - self.mu[idx]
        Xo = self.X[idx]
        cov = self.posterior_cov(observed)
        theta = cov @ (Xo.T @ y / self.noise_var)
        mean = self.mu + self.X @ theta
        var = np.einsum("ij,jk,ik->i", self.X, cov, self.X) + self.noise_var
        return mean, np.sqrt(var)

    def choose(self, k: int, already: Iterable[Shape] = (), candidates: Iterable[Shape] | None = None) -> list[Shape]:
        """K shapes to measure (after those ``already`` measured): greedy I-optimal design."""
        chosen = [s for s in already if s in self.shapes]
        pool = [s for s in (candidates if candidates is not None else self.shapes) if s in self.shapes]
        X = self.X
        while len(chosen) < k:
            best, best_score = None, math.inf
            for s in pool:
                if s in chosen:
                    continue
                cov = self.posterior_cov([*chosen, s])
                score = float(np.einsum("ij,jk,ik->", X, cov, X))  # summed predictive variance
                if score < best_score - 1e-12:
                    best, best_score = s, score
            if best is None:
                break
            chosen.append(best)
        return chosen

    def transfer(self, observed: dict[Shape, float], z: float | None = None) -> list[Transferred]:
        """Every shape of the model that is not in ``observed``, with a ``LEVEL`` interval."""
        mean, sd = self.posterior(observed)
        z = 1.645 if z is None else z
        out = []
        for i, s in enumerate(self.shapes):
            if s in observed:
                continue
            out.append(Transferred(s[0], s[1], float(np.exp(mean[i])), float(np.exp(mean[i] - z * sd[i])),
                                   float(np.exp(mean[i] + z * sd[i])), float(sd[i])))
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "model": "low-rank log latency (probabilistic PCA prior, Gaussian posterior)",
            "references": [k.label for k in self.references],
            "shapes": len(self.shapes),
            "rank": self.rank,
            "noise_sd_log": round(math.sqrt(self.noise_var), 4),
        }


def _loo_noise(lines: Sequence[Line], shapes: Sequence[Shape]) -> float:
    """Mean squared log residual of each known line fitted (every shape observed) from the others."""
    res = []
    for j, ln in enumerate(lines):
        others = [x for i, x in enumerate(lines) if i != j]
        sub = TransferModel.fit(others, shapes, noise_var=DEFAULT_NOISE**2)
        mean, _ = sub.posterior({s: ln.ms[s] for s in shapes})
        res.append(np.log([ln.ms[s] for s in shapes]) - mean)
    return float(np.mean(np.square(np.concatenate(res))))


def calibrate_z(lines: Sequence[Line], k: int, shapes: Sequence[Shape] | None = None,
                first: Sequence[Shape] = (), level: float = LEVEL) -> tuple[float, int]:
    """Interval multiplier from leaving each known line out, each transferred from K of its shapes
    (``first`` then chosen as :meth:`TransferModel.choose` does): (z, number of residuals)."""
    shapes = list(shapes) if shapes is not None else common_shapes(lines)
    if len(lines) < 3:
        return 1.645, 0
    zs = []
    for j, ln in enumerate(lines):
        others = [x for i, x in enumerate(lines) if i != j]
        sub = TransferModel.fit(others, shapes)
        obs = {s: ln.ms[s] for s in sub.choose(k, first)}
        for t in sub.transfer(obs):
            zs.append(abs(math.log(ln.ms[(t.depth, t.width)]) - math.log(t.ms)) / t.sd_log)
    return max(float(np.quantile(zs, level)), 0.5), len(zs)


# -- reading lines from the store -------------------------------------------------------------


def line_rows(table: Any, key: LineKey, source: str | tuple[str, ...] = "measured") -> pd.DataFrame:
    """The rows of one line with drift-corrected milliseconds (``ms``, ``ms_lo``, ``ms_hi``); one row
    per shape: a paired-protocol row before a legacy one, then the newest."""
    rows = table.rows(phase=key.phase, variant=key.variant, prompt_len=key.prompt_len, batch=key.batch,
                      source=source)
    if "threads" in rows.columns:
        rows = rows[rows["threads"].astype(int) == int(key.threads)]
    if "attn_width" in rows.columns:  # one-ratio shapes only (separate attention/MLP widths: not transferred yet)
        rows = rows[rows["attn_width"].isna()]
    rows = table.corrected(rows) if hasattr(table, "corrected") else rows.assign(ms=rows["p50_ms"])
    if "protocol" in rows.columns:
        rows = rows.assign(_legacy=(rows["protocol"] == "legacy").astype(int))
        rows = rows.sort_values(["_legacy", "created"], ascending=[False, True]).drop(columns="_legacy")
    return rows.drop_duplicates(["depth", "width"], keep="last")


def load_lines(root: Path | str | None, model: str, phase: str, prompt_len: int, batch: int = 1,
               exclude: LineKey | None = None) -> list[Line]:
    """Every measured line of ``model`` in the store (any device, flow, variant, thread count)."""
    from profiler.lookup import list_tables
    from profiler.table import LatencyTable

    out: list[Line] = []
    for info in list_tables(root):
        if info.model != model:
            continue
        table = LatencyTable(info.device, info.flow, info.model, root)
        meas = table.rows(phase=phase, prompt_len=prompt_len, batch=batch, source="measured")
        for variant in sorted(meas["variant"].unique()):
            sub = meas[meas["variant"] == variant]
            for threads in sorted({int(t) for t in sub["threads"]}) if "threads" in sub.columns else [0]:
                key = LineKey(info.device, info.flow, model, variant, threads, phase, prompt_len, batch)
                if exclude is not None and key == exclude:
                    continue
                rows = line_rows(table, key)
                ms = {line_point(d, w): float(v) for d, w, v in zip(rows["depth"], rows["width"], rows["ms"])}
                if ms:
                    out.append(Line(key, ms))
    return out


# -- `amoeba profile --few-shot K` ------------------------------------------------------------


@dataclass
class FewShotResult:
    table: Path
    measured: list[Shape]  # shapes measured for the line (present before or timed now)
    timed_now: int
    transferred: int
    references: list[str]
    seconds: float
    phases: list[str] = field(default_factory=list)


def _no_reference_error(key: LineKey, wanted: Sequence[Shape]) -> AmoebaError:
    ds = ",".join(str(d) for d in sorted({d for d, _ in wanted}))
    ws = ",".join(f"{w:g}" for w in sorted({w for _, w in wanted}, reverse=True))
    return AmoebaError(
        f"--few-shot needs another line of {key.model} already measured on these shapes ({key.phase}, "
        f"prompt_len {key.prompt_len}, batch {key.batch}) to transfer from, and the store has none: profile one "
        f"first, e.g. `amoeba profile --device {key.device} --flow pytorch --model {key.model} --depths {ds} "
        f"--widths {ws} --phases {key.phase} --prompt-len {key.prompt_len}`"
    )


def few_shot(plan: Any, k: int, root: Path | str | None = None, progress: Any = None) -> FewShotResult:
    """Measure the K most informative shapes of ``plan``'s line and transfer the rest (per phase).

    The K shapes include the paired protocol's reference (the full-size model: every block is
    timed against it anyway, so it is measured whatever else is) and K - 1 shapes chosen by
    :meth:`TransferModel.choose`. Shapes the line already has count first, so re-running with a
    larger K adds measurements and re-transfers the rest. Transferred rows are stored as ratios to
    the line's reference level (like measured rows), with the point estimate and the 90% interval
    also in ``p50_ms``/``p10_ms``/``p90_ms`` and ``n = 0`` (no sample behind them).
    """
    import dataclasses
    import time

    from profiler.flows import make_flow
    from profiler.measure import LEGACY
    from profiler.plan import run_profile
    from amoeba_core.shape import grid_key as ref_name
    from profiler.table import LatencyTable, level_key, now_utc, row_key

    if k < 1:
        raise AmoebaError(f"--few-shot needs K >= 1 measurements, got {k}")
    if plan.sparse or plan.per_layer or getattr(plan, "attn_widths", ()):
        raise AmoebaError("--few-shot chooses its own shapes: it cannot be combined with --sparse, --per-layer "
                          "or --attn-widths")
    t0 = time.perf_counter()
    variant = make_flow(plan.flow, plan.config).variant
    threads = int(plan.config.threads)
    wanted = [line_point(d, w) for w in plan.widths for d in plan.depths]
    reference = line_point(*plan.reference)
    table = LatencyTable(plan.device, plan.flow, plan.model, root)
    setups = []  # validate every phase before timing anything
    for phase in plan.phases:
        key = LineKey(plan.device, plan.flow, plan.model, variant, threads, phase, plan.prompt_len, plan.batch)
        known = load_lines(root, plan.model, phase, plan.prompt_len, plan.batch, exclude=key)
        refs, shapes = select_references(known, [*wanted, reference])
        if not refs or reference not in shapes:
            raise _no_reference_error(key, sorted(set(wanted) | {reference}))
        model = TransferModel.fit(refs, shapes)
        have = line_rows(table, key) if table.exists else None
        already = set() if have is None else {line_point(d, w) for d, w in zip(have["depth"], have["width"])}
        first = [reference, *sorted(s for s in already if s in shapes and s != reference)]
        chosen = model.choose(max(k, len(first)), first)
        setups.append((phase, key, refs, shapes, model, chosen, already))
    timed = 0
    for phase, key, _, _, _, chosen, already in setups:
        todo = [s for s in chosen if s not in already]
        for w in sorted({w for _, w in todo}, reverse=True):
            ds = tuple(sorted(d for d, x in todo if x == w))
            sub = dataclasses.replace(plan, depths=ds, widths=(w,), phases=(phase,))
            timed += run_profile(sub, root, progress).written
    table.reload()
    written = 0
    refs_out: set[str] = set()
    levels = table.reference_levels() if hasattr(table, "reference_levels") else {}
    for phase, key, refs, shapes, model, _, _ in setups:
        rows = line_rows(table, key)
        obs = {line_point(d, w): float(v) for d, w, v in zip(rows["depth"], rows["width"], rows["ms"])
               if line_point(d, w) in shapes}
        z, n_z = calibrate_z(refs, len(obs), shapes, [reference])
        ref_key = ref_name(*plan.reference)
        level = levels.get(level_key(key.variant, phase, key.prompt_len, key.batch, key.threads, ref_key))
        for t in model.transfer(obs, z):
            # the protocol of the measurements it is derived from: paired when their line has a level
            paired = level is not None and level.level_ms > 0
            row = {**row_key(key.variant, t.depth, t.width, phase, key.batch, key.prompt_len, "transferred",
                             threads=key.threads, protocol=plan.measure.protocol if paired else LEGACY),
                   "p50_ms": t.ms, "p10_ms": t.lo_ms, "p90_ms": t.hi_ms, "n": 0, "discarded": 0,
                   "samples_ms": [], "created": now_utc()}
            if paired:
                row.update(ratio=t.ms / level.level_ms, ratio_lo=t.lo_ms / level.level_ms,
                           ratio_hi=t.hi_ms / level.level_ms, reference=ref_key)
            table.replace(row)
            written += 1
        info = {**model.describe(), "measured_shapes": [f"d{d}-w{w:.3f}" for d, w in obs],
                "interval_level": LEVEL, "interval_z": round(z, 3), "interval_calibration_residuals": n_z,
                "created": now_utc()}
        transfers = dict(table.header.get("transfers") or {})
        transfers[f"{key.variant}/{phase}/p{key.prompt_len}/b{key.batch}/t{key.threads}"] = info
        table.write_header({"transfers": transfers})
        refs_out |= {r.key.label for r in refs}
    return FewShotResult(table.path, [s for st in setups for s in st[5]], timed, written, sorted(refs_out),
                         time.perf_counter() - t0, [st[0] for st in setups])

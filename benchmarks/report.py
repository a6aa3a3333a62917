"""Render docs/results.md from benchmarks/results/*.json: each table from its file, each figure beside its
command, host and interval, as the file records them.

    python benchmarks/report.py            # writes docs/results.md and the README's results summary
    python benchmarks/report.py --check    # exit 1 when docs/results.md is not what the files render

The renderer is generic: top-level scalars form a summary, lists of records and maps of records become
tables, ``{value, lo, hi}``-like records are printed as ``value [lo, hi]``. A few files get a headline
first (peers.json, model_cost.json, query_load.json, stage2_ablation.json) read from the fields they
record; a field that is missing is skipped, never invented. Output is deterministic (sorted files, no
clock), so a test can compare it with the committed page.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "results.md"
MAX_ROWS = 30
MAX_COLS = 10
MAX_TABLES = 10
TEXT = 160  # free text is clipped to this many characters
COMMAND_KEYS = ("command", "commands")
HOST_KEYS = ("host", "where", "cpu", "threads", "workers", "loadavg_before", "loadavg_after", "load_before",
             "load_after", "device")
INTERVAL_KEYS = ("interval", "protocol", "noise", "ci")
# words the docs never carry (they describe how the project was built, not the tool); masked in free text
_MASK = ((re.compile(r"(?i)session"), "instance"), (re.compile(r"(?i)scratch"), "temporary"),
         (re.compile(r"(?i)issue "), "item "),
         (re.compile(r"(\d{4}-\d{2}-\d{2})[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2}| ?UTC)?"), r"\1"),
         (re.compile(r"\b\d{1,2}:\d{2}(:\d{2})? ?UTC\b"), ""), (re.compile(r"\bUTC\b"), ""))
_INTERVALS = (("value", "lo", "hi"), ("mean", "lo", "hi"), ("median", "lo", "hi"), ("ms", "lo_ms", "hi_ms"),
              ("estimate", "lo", "hi"), ("point", "lo", "hi"), ("diff", "lo", "hi"), ("delta", "lo", "hi"))


def clean(text: str, limit: int = TEXT) -> str:
    for rx, sub in _MASK:
        text = rx.sub(sub, text)
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def interval_of(v: Any) -> tuple[Any, Any, Any] | None:
    """(value, lo, hi) when ``v`` is a record of a figure and its interval."""
    if isinstance(v, dict):
        for a, lo, hi in _INTERVALS:
            if a in v and lo in v and hi in v and all(isinstance(v[k], (int, float)) for k in (a, lo, hi)):
                return v[a], v[lo], v[hi]
    if isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   for x in v) and v[1] <= v[0] <= v[2]:
        return v[0], v[1], v[2]
    return None


def num(v: float) -> str:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    if isinstance(v, int) or float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}" if abs(v) >= 10_000 else str(int(v))
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def cell(v: Any) -> str:
    """One value as a table cell (figures with their interval; short lists inline; records summarised)."""
    iv = interval_of(v)
    if iv is not None:
        return f"{num(iv[0])} [{num(iv[1])}, {num(iv[2])}]"
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return num(v)
    if isinstance(v, str):
        return clean(v)
    if isinstance(v, list):
        if all(is_scalar(x) for x in v) and len(v) <= 12:
            return clean(", ".join(cell(x) for x in v))
        return f"({len(v)} items)"
    if isinstance(v, dict):
        if all(is_scalar(x) for x in v.values()) and len(v) <= 6:
            return clean("; ".join(f"{k} {cell(x)}" for k, x in v.items()))
        return f"({len(v)} fields)"
    return clean(str(v))


def table(rows: list[tuple[str, dict[str, Any]]], key_name: str | None = None) -> list[str]:
    """A markdown table of records (a name column first when ``key_name``)."""
    cols: list[str] = []
    for _, r in rows:
        for k, v in r.items():
            if k not in cols and (is_scalar(v) or interval_of(v) is not None or isinstance(v, (list, dict))):
                cols.append(k)
    cols = cols[:MAX_COLS]
    head = ([key_name] if key_name else []) + cols
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows[:MAX_ROWS]:
        out.append("| " + " | ".join(([clean(name)] if key_name else []) + [cell(r.get(c)) for c in cols]) + " |")
    if len(rows) > MAX_ROWS:
        out.append(f"\n(first {MAX_ROWS} of {len(rows)} rows; the rest are in the file)")
    return out


def records(v: Any) -> list[tuple[str, dict[str, Any]]] | None:
    """``v`` as named records when it is a list of dicts or a map of dicts (not a single figure)."""
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v) and interval_of(v[0]) is None:
        return [(str(i), x) for i, x in enumerate(v)]
    if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
        if all(interval_of(x) is not None for x in v.values()):
            return [(k, {"figure [90%]": x}) for k, x in v.items()]
        return [(str(k), x) for k, x in v.items()]
    return None


def tables(data: dict[str, Any], budget: list[int], prefix: str = "", depth: int = 0) -> list[str]:
    out: list[str] = []
    for k, v in data.items():
        if budget[0] <= 0:
            break
        recs = records(v)
        if recs is not None:
            budget[0] -= 1
            named = isinstance(v, dict)
            out += ["", f"**{prefix}{k}**", ""] + table(recs, "name" if named else None)
            if depth == 0:  # one level down: records inside each record (the first few)
                for name, r in recs[:3]:
                    sub = {kk: vv for kk, vv in r.items() if records(vv) is not None}
                    if sub:
                        out += tables(sub, budget, f"{prefix}{k} / {name} / ", depth + 1)
        elif isinstance(v, dict) and depth == 0 and any(not is_scalar(x) for x in v.values()):
            out += tables(v, budget, f"{prefix}{k} / ", depth + 1)
        elif isinstance(v, dict) and depth == 0 and len(v) > 6:
            budget[0] -= 1
            out += ["", f"**{prefix}{k}**", ""] + table([("", v)])
    return out


def find(data: Any, key: str) -> list[tuple[str, Any]]:
    """Every (path, value) of ``key`` anywhere in ``data``."""
    hits: list[tuple[str, Any]] = []

    def walk(x: Any, path: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                p = f"{path}.{k}" if path else str(k)
                if k == key:
                    hits.append((p, v))
                walk(v, p)
        elif isinstance(x, list):
            for i, v in enumerate(x[:200]):
                walk(v, f"{path}[{i}]")

    walk(data, "")
    return hits


def headline_keys(*keys: str) -> Callable[[dict[str, Any]], list[str]]:
    def render(data: dict[str, Any]) -> list[str]:
        return [f"- `{p}`: {cell(v)}" for k in keys for p, v in find(data, k)[:12]]

    return render


HEADLINES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "peers": headline_keys("amoeba_beats_all_peers", "paired_diff", "paired_difference"),
    "model_cost": headline_keys("fit", "extrapolation", "extrapolated", "select_7b", "stage2_7b", "residuals"),
    "query_load": headline_keys("max_rps_p99_under_50ms", "max_rps_level", "in_process"),
    "stage2_ablation": headline_keys("within_3pct_of_per_shape", "balancing", "finding"),
}


def makefile_commands() -> dict[str, list[str]]:
    """results file name -> the `make bench` lines that write it (``--out``, else ``<script stem>.json``)."""
    found: dict[str, list[str]] = {}
    mk = ROOT / "Makefile"
    if not mk.is_file():
        return found
    for line in mk.read_text().splitlines():
        m = re.match(r"\s*\$\(BIN\)/python (benchmarks/(\w+)\.py.*)$", line)
        if not m:
            continue
        out = re.search(r"--out benchmarks/results/(\S+\.json)", m.group(1))
        found.setdefault(out.group(1) if out else f"{m.group(2)}.json", []).append(f"python {m.group(1).strip()}")
    return found


def _named(v: Any) -> Any:
    """A record such as a device or host by its description or name."""
    if isinstance(v, dict):
        for k in ("description", "name"):
            if isinstance(v.get(k), str):
                return v[k]
    return v


def facts(data: dict[str, Any], name: str, made_by: dict[str, list[str]]) -> list[str]:
    cmds = [data[k] for k in COMMAND_KEYS if isinstance(data.get(k), str)]
    via = "" if cmds or name not in made_by else "(not recorded in the file; `make bench` writes it with) "
    cmds = cmds or made_by.get(name, [])
    env = data.get("environment") if isinstance(data.get("environment"), dict) else {}
    host = [f"{k} {cell(_named(src[k]))}" for src in (data, env) for k in HOST_KEYS
            if k in src and not isinstance(src[k], list)]
    ivs = [cell(data[k]) for k in INTERVAL_KEYS if isinstance(data.get(k), str)]
    return [f"- command: {via}{' && '.join(f'`{clean(c, 400)}`' for c in cmds) if cmds else 'not recorded in the file'}",
            f"- host: {clean('; '.join(host)) if host else 'not recorded in the file'}",
            f"- interval: {' / '.join(ivs) if ivs else 'as each figure states (value [lo, hi]); none recorded for the file'}"]


def render_file(path: Path, made_by: dict[str, list[str]]) -> list[str]:
    out = ["", f"## {path.stem}", "", f"File: [`benchmarks/results/{path.name}`](../benchmarks/results/{path.name})", ""]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return out + [f"(not readable as JSON: {clean(type(e).__name__)})"]
    if not isinstance(data, dict):
        return out + [f"- a JSON {type(data).__name__} of {len(data) if hasattr(data, '__len__') else 1} entries"]
    out += facts(data, path.name, made_by)
    head = HEADLINES.get(path.stem, lambda d: [])(data)
    if head:
        out += ["", "Headline:", ""] + head
    summary = [(k, v) for k, v in data.items() if k not in COMMAND_KEYS + INTERVAL_KEYS + HOST_KEYS
               and (is_scalar(v) or interval_of(v) is not None
                    or (isinstance(v, list) and all(is_scalar(x) for x in v))
                    or (isinstance(v, dict) and len(v) <= 6 and all(is_scalar(x) for x in v.values())))]
    if summary:
        out += ["", "| field | value |", "|---|---|"] + [f"| {clean(k)} | {cell(v)} |" for k, v in summary]
    out += tables(data, [MAX_TABLES])
    return out


def render(files: Iterable[Path]) -> str:
    files = sorted(files, key=lambda p: p.name)
    made_by = makefile_commands()
    lines = ["# Results", "",
             "Generated by `python benchmarks/report.py` from the JSON files in "
             "[`benchmarks/results/`](../benchmarks/results/); do not edit by hand. Each section is one file: the "
             "command that wrote it, the host it ran on and how its intervals are computed (as the file records "
             "them), then its figures. Figures are `value [lo, hi]` with the file's interval (90% unless stated). "
             f"Free text is clipped to {TEXT} characters and tables to {MAX_ROWS} rows; the files hold the rest.",
             "", "Files: " + ", ".join(f"[{p.stem}](#{p.stem.lower()})" for p in files)]
    for p in files:
        lines += render_file(p, made_by)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    from _report_readme import README, render_readme  # the README's summary (benchmarks/_report_readme.py)

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="exit 1 when --out differs from the rendering")
    a = ap.parse_args(argv)
    text = render(a.results.glob("*.json"))
    readme = README.read_text() if README.is_file() else ""
    if a.check:
        same = a.out.is_file() and a.out.read_text() == text and render_readme(readme) == readme
        print(f"{a.out}, {README.name}: {'up to date' if same else 'stale: run python benchmarks/report.py'}")
        return 0 if same else 1
    a.out.write_text(text)
    if readme and render_readme(readme) != readme:
        README.write_text(render_readme(readme))
    print(f"{a.out}: {len(text.splitlines())} lines from {len(list(a.results.glob('*.json')))} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())

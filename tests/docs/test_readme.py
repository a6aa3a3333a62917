"""README.md and docs/*.md as a new user reads them: short, about the tool alone, every relative link
resolving in the clone, the results generated from their files, the Python example runnable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# development history never belongs in the docs: these words, and clock times / UTC timestamps
FORBIDDEN = re.compile(r"session|issue |scratch|\bUTC\b|\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}|\b\d{1,2}:\d{2}(:\d{2})? ?(UTC|Z)\b",
                       re.IGNORECASE)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_readme_is_at_most_250_lines() -> None:
    assert len(README.read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_development_history(page: Path) -> None:
    bad = [f"{page.name}:{i}: {m.group(0)!r}" for i, line in enumerate(page.read_text().splitlines(), 1)
           for m in [FORBIDDEN.search(line)] if m]
    assert not bad, "\n".join(bad[:20])


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links inside code blocks are not links
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or ROOT not in (dest, *dest.parents):
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_results_page_and_readme_summary_are_what_report_renders() -> None:
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr + " (run: python benchmarks/report.py, then commit)"


def test_report_renders_an_unknown_file_and_a_broken_one(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report

    (tmp_path / "new_bench.json").write_text('{"figure": {"value": 1.5, "lo": 1.0, "hi": 2.0}, '
                                             '"rows": [{"a": 1, "b": "x"}], "nested": {"k": {"v": 2}}}')
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "peers.json").write_text('{"budgets": [{"amoeba_beats_all_peers": true}]}')
    text = report.render(sorted(tmp_path.glob("*.json")))
    assert "1.5 [1, 2]" in text and "not readable as JSON" in text and "amoeba_beats_all_peers" in text


def test_readme_summary_lines_come_from_the_files() -> None:
    text = README.read_text()
    block = text.split("<!-- results:begin", 1)[1].split("<!-- results:end -->", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| ") and "docs/results.md#" in line]
    assert len(rows) >= 4
    for row in rows:
        name = re.search(r"\[(\w+\.json)\]", row).group(1)  # type: ignore[union-attr]
        assert (ROOT / "benchmarks" / "results" / name).is_file()


def api_example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- test: api-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md has no python block marked <!-- test: api-example -->"
    return m.group(1)


def test_readme_api_example_runs(run_dir: Path, profiles: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AMOEBA_RUN", str(run_dir))
    monkeypatch.setenv("AMOEBA_PROFILES", str(profiles))
    exec(compile(api_example(), "README.md:api-example", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "amoeba export" in out and " ms " in out and "from " in out


def test_citation_cff_names_the_tool_and_the_paper() -> None:
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"].startswith("1.2") and cff["title"] and cff["authors"] and cff["license"]
    paper = cff["references"][0]
    assert paper["title"].startswith("AmoebaLLM") and paper["year"] == 2024
    assert paper["authors"][0]["family-names"] == "Fu"
    assert "AmoebaLLM: Constructing Any-Shape" in README.read_text()

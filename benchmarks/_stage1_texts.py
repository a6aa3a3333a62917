"""The held-out texts of benchmarks/stage1.py's ``--extra-texts`` (other registers than the calibration split),
each with a record of what it was (package versions, file digests), so a result names its text."""

from __future__ import annotations

import re
from pathlib import Path

# Held-out texts from other sources (``--extra-texts``), seen by no selection and by no choice among
# selections: other registers than the calibration split's (pydoc topics, standard-library module docs).
# Each document is cut to its first EXTRA_CHARS characters (some READMEs carry a whole changelog).
EXTRA_CHARS = 20_000
# ood-readmes: the long descriptions (READMEs) in the installed metadata of the project's core
# dependencies: markdown prose, badges, code and install notes.
OOD_PACKAGES = ("torch", "transformers", "accelerate", "peft", "numpy", "pandas", "pyarrow", "pydantic", "typer",
                "rich", "optuna", "fastapi", "uvicorn", "gguf", "pyyaml")
# ood-idle: IDLE's documentation shipped with Python (idlelib: its help page with the HTML tags removed,
# README, change logs, to-do list, extension notes, credits): a user manual and changelog prose. idlelib is
# not among the standard-library modules the calibration/test text renders (amoeba_core/_pydoc_text.py).
IDLE_FILES = ("help.html", "README.txt", "NEWS.txt", "NEWS2x.txt", "HISTORY.txt", "TODO.txt", "extend.txt",
              "CREDITS.txt")


def _doc_record(text: str, **what: str) -> dict:
    import hashlib

    return {**what, "characters": len(text), "sha256_16": hashlib.sha256(text.encode()).hexdigest()[:16]}


def readme_docs() -> tuple[list[str], dict]:
    """The ``ood-readmes`` documents and what they were: package, version, characters, text digest per
    document (the text changes with the installed versions, so a result names them)."""
    import importlib.metadata as md

    docs, record = [], {}
    for name in OOD_PACKAGES:
        try:
            meta = md.metadata(name)
        except md.PackageNotFoundError:
            continue
        text = (meta.get_payload() or meta.get("Description") or "").strip()[:EXTRA_CHARS]
        if len(text) < 1_000:  # a one-line description is not a document
            continue
        docs.append(text)
        record[name] = _doc_record(text, version=meta["Version"])
    return docs, {"what": f"README descriptions in installed package metadata, first {EXTRA_CHARS} characters each",
                  "packages": record}


def idle_docs() -> tuple[list[str], dict]:
    """The ``ood-idle`` documents (:data:`IDLE_FILES` of this Python's idlelib) and what they were."""
    import html
    import html.parser
    import idlelib
    import platform

    class _Text(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []
            self.skip = 0

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag in ("script", "style"):  # code, not text
                self.skip += 1

        def handle_endtag(self, tag: str) -> None:
            if tag in ("script", "style") and self.skip:
                self.skip -= 1

        def handle_data(self, data: str) -> None:
            if not self.skip:
                self.parts.append(data)

    folder = Path(idlelib.__file__).parent
    docs, record = [], {}
    for name in IDLE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if name.endswith(".html"):
            parser = _Text()
            parser.feed(text)
            text = html.unescape("".join(parser.parts))
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in text.strip().splitlines()))[:EXTRA_CHARS]
        docs.append(text)
        record[name] = _doc_record(text)
    return docs, {"what": f"IDLE's documentation in Python {platform.python_version()}'s idlelib (help.html without "
                          f"tags), first {EXTRA_CHARS} characters each", "files": record}


LICENSE_NAMES = ("license", "licence", "copying", "notice")


def _shingles(text: str, k: int = 5) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z]+", text.lower())
    return {tuple(words[i:i + k]) for i in range(max(1, len(words) - k + 1))}


def _near_copy_free(named: list[tuple[str, str]], min_chars: int = 500) -> list[tuple[str, str]]:
    """``(name, text)`` pairs in order, without stubs (< ``min_chars``) and without near-copies: a text is
    dropped when half of its word 5-grams occur in one text already kept."""
    out, kept = [], []
    for name, text in named:
        sh = _shingles(text)
        if len(text) < min_chars or any(len(sh & other) >= len(sh) / 2 for other in kept):
            continue
        kept.append(sh)
        out.append((name, text))
    return out


def license_docs() -> tuple[list[str], dict]:
    """The ``ood-licenses`` documents: the license files in the metadata of every installed distribution
    (``*.dist-info/LICENSE*``, ``licenses/*``, ``COPYING*``, ``NOTICE*``), in order of distribution name
    and path, first :data:`EXTRA_CHARS` characters each. Legal prose, a register neither calibration
    source has. Most MIT/BSD/Apache files differ only in names and years, so a file is kept only if
    fewer than half of its word 5-grams occur in one file already kept."""
    import importlib.metadata as md

    named, versions = [], {}
    dists = sorted(md.distributions(), key=lambda d: (d.metadata["Name"] or "").lower())
    for dist in dists:
        name = dist.metadata["Name"]
        for f in sorted(dist.files or [], key=str):
            parts = [x.lower() for x in f.parts]
            if not any(x.endswith(".dist-info") for x in parts[:-1]) or not parts[-1].startswith(LICENSE_NAMES):
                continue
            try:
                text = Path(str(f.locate())).read_text(encoding="utf-8", errors="replace").strip()[:EXTRA_CHARS]
            except OSError:
                continue
            key = f"{name}:{f.as_posix()}"
            named.append((key, text))
            versions[key] = dist.version
    kept = _near_copy_free(named)  # stubs, and near-copies of a license already kept, dropped
    docs = [t for _, t in kept]
    record = {n: _doc_record(t, version=versions[n]) for n, t in kept}
    return docs, {"what": f"license files in installed distributions' metadata, near-copies dropped (half "
                          f"their word 5-grams in a kept file), first {EXTRA_CHARS} characters each",
                  "files": record}


def lmeval_docs() -> tuple[list[str], dict]:
    """The ``ood-lmeval`` documents: the task READMEs of the installed lm-eval harness (the ``eval``
    extra; ``lm_eval/tasks/**/README.md``, by path, first :data:`EXTRA_CHARS` characters each, near-copies
    dropped as :func:`_near_copy_free`): descriptions of NLP benchmarks with their papers' abstracts and
    BibTeX, a register no calibration source and no earlier held-out text has."""
    import importlib.metadata as md
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        return [], {"what": "lm-eval is not installed (make install-all installs it)"}
    root = Path(spec.origin).parent / "tasks"
    named = [(p.relative_to(root).as_posix(), p.read_text(encoding="utf-8", errors="replace").strip()[:EXTRA_CHARS])
             for p in sorted(root.rglob("README.md"))]
    kept = _near_copy_free(named)
    return [t for _, t in kept], {
        "what": f"task READMEs of lm-eval {md.version('lm_eval')} (lm_eval/tasks/**/README.md; {len(named)} files, "
                f"{len(kept)} kept: stubs under 500 characters and near-copies dropped), first {EXTRA_CHARS} "
                f"characters each",
        "files": {n: _doc_record(t) for n, t in kept}}


def opticks_docs() -> tuple[list[str], dict]:
    """The ``ood-opticks`` documents: Isaac Newton's *Opticks* (1730; the Project Gutenberg text that
    tvm-ffi ships as libbacktrace test data, the ``tvm`` extra), cut at its Part headings (front matter
    first): eighteenth-century scientific prose, far from every other text here."""
    import importlib.metadata as md
    import importlib.util

    spec = importlib.util.find_spec("tvm_ffi")
    path = None if spec is None or spec.origin is None else (
        Path(spec.origin).parent / "3rdparty/libbacktrace/Isaac.Newton-Opticks.txt")
    if path is None or not path.is_file():
        return [], {"what": "tvm-ffi's copy of Opticks is not installed (make install-all with TVM=1 installs it)"}
    text = path.read_text(encoding="utf-8", errors="replace")
    parts = [p.strip() for p in re.split(r"\n(?=_PART [IVX]+\._\s*\n)", text) if p.strip()]
    return parts, {"what": f"Newton's Opticks from tvm-ffi {md.version('apache-tvm-ffi')} "
                           f"({path.name}, {len(text)} characters), cut at its {len(parts) - 1} Part headings",
                   "files": {f"part{i}": _doc_record(p) for i, p in enumerate(parts)}}


EXTRA_TEXTS = {"ood-readmes": readme_docs, "ood-idle": idle_docs, "ood-licenses": license_docs,
               "ood-lmeval": lmeval_docs, "ood-opticks": opticks_docs}

"""Standard-library module documentation as prose (the ``stdlib`` source of :mod:`amoeba_core.data`).

Standard library only, no package imports: :mod:`amoeba_core.data` runs this file as a script
in a fresh ``python -I -S`` so no other library has patched what pydoc documents
(``python -I -S _pydoc_text.py OUT.json`` writes ``{"docs": {module: text}, "missing": {...}}``).
Any change to the list or the cleaning is a new data version (:data:`amoeba_core.data.DATA_VERSION`).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from typing import Any

# Portable standard-library modules (no platform-specific ones such as os, socket, signal),
# present on Python 3.10 and later; part of DATA_VERSION.
STDLIB_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "base64", "bdb", "binascii", "bisect", "bz2", "calendar", "cmd", "code", "codecs",
    "codeop", "collections", "colorsys", "configparser", "contextlib", "copy", "copyreg", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "dis", "doctest", "email.message", "email.utils", "enum", "filecmp",
    "fileinput", "fnmatch", "fractions", "ftplib", "functools", "gettext", "glob", "graphlib", "gzip", "hashlib",
    "heapq", "hmac", "html", "html.parser", "http.client", "http.cookies", "http.server", "imaplib", "inspect", "io",
    "ipaddress", "itertools", "json", "keyword", "linecache", "logging", "logging.handlers", "lzma", "mailbox",
    "math", "mimetypes", "numbers", "operator", "optparse", "pathlib", "pickle", "pickletools", "pkgutil",
    "plistlib", "poplib", "pprint", "pstats", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets",
    "shelve", "shlex", "shutil", "smtplib", "statistics", "string", "stringprep", "struct", "symtable", "tabnanny",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "token", "tokenize", "trace", "traceback", "types",
    "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zipimport", "zlib",
)

_KEEP_SECTIONS = {"DESCRIPTION", "CLASSES", "FUNCTIONS"}
_KEEP_CLASS_BLOCKS = ("Methods defined here:", "Class methods defined here:", "Static methods defined here:")
_GUTTER = re.compile(r"^( *)\|  ?")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_BOILERPLATE = {"Initialize self.  See help(type(self)) for accurate signature."}


def _is_block_header(text: str) -> bool:
    return text.endswith(":") and (" defined here" in text or " inherited from " in text
                                   or text == "Method resolution order:")


def module_text(name: str) -> str:
    """One module's documentation as prose (see the module docstring for what is removed)."""
    import pydoc

    raw = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
    lines = raw.splitlines()[1:]  # "Python Library Documentation: module X"
    out: list[str] = []
    section: str | None = None
    block: str | None = None  # the current class block ("Methods defined here:", ...)
    dunder = False  # inside a __special__ method's entry (slot-wrapper boilerplate)
    for line in lines:
        if line and not line[0].isspace():  # a section header: NAME, DESCRIPTION, CLASSES, ...
            section, block = line.strip(), None
            if section in _KEEP_SECTIONS:
                out.append(section.capitalize())
            continue
        if section == "NAME":
            out.append(line.strip())
            continue
        if section not in _KEEP_SECTIONS:
            continue
        m = _GUTTER.match(line)
        if m is None:
            block = None
            out.append(line.rstrip())
            continue
        content = line[m.end():]
        stripped = content.strip()
        if stripped and set(stripped) == {"-"}:
            block = "separator"
            continue
        if not content.startswith(" ") and _is_block_header(stripped):
            block, dunder = stripped, False
            continue
        if content and not content.startswith(" "):
            dunder = content.startswith("__")
        if dunder or (block is not None and block not in _KEEP_CLASS_BLOCKS) or stripped in _BOILERPLATE:
            continue
        out.append((m.group(1)[:-1] + "    " + content).rstrip())
    text = _ADDRESS.sub("", "\n".join(out))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _render_all() -> dict[str, Any]:
    """Every module's text, in *this* process (run by :func:`_stdlib_texts` in a clean one)."""
    docs, missing = {}, {}
    for name in STDLIB_MODULES:
        try:
            docs[name] = module_text(name)
        except ImportError as e:  # a Python built without one of them (e.g. no zlib)
            missing[name] = str(e)
    return {"docs": docs, "missing": missing}


if __name__ == "__main__":
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(_render_all(), f)

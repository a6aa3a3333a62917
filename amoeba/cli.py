"""Thin CLI. Each package lists its commands in ``<package>/cli.py`` as ``COMMANDS``
(name -> typed function, or a ``typer.Typer`` for a group); this file only composes them.

Command modules import heavy libraries (torch, transformers, optuna) inside the command
functions, so ``amoeba --help`` stays fast. A :class:`AmoebaError` anywhere becomes a one-line
``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

import typer

from amoeba_core.errors import AmoebaError

COMMAND_MODULES = ("profiler.cli", "amoeba_core.cli", "amoeba_core.finetune_cli", "search.cli")

app = typer.Typer(
    name="amoeba",
    help="Profile devices, select and fine-tune LLM subnets, and search the accuracy-latency front.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name != mod_name:
                raise
            continue
        for name, target in mod.COMMANDS.items():
            if isinstance(target, typer.Typer):
                app.add_typer(target, name=name)
            else:
                app.command(name)(target)


_register()


def quiet_libraries() -> None:
    """Silence what the user cannot act on: Hugging Face's per-file progress bars (our own rich bars
    cover the long steps), transformers' advisory log lines, and deprecation warnings raised
    inside torch/transformers/onnxscript internals. ``TRANSFORMERS_VERBOSITY`` /
    ``HF_HUB_DISABLE_PROGRESS_BARS`` set by the user win; ``AMOEBA_LOG=INFO`` shows our own logs."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for mod in ("torch", "transformers", "onnxscript", "onnx", "accelerate", "copyreg"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=mod)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=mod)


def main(argv: list[str] | None = None) -> None:
    quiet_libraries()
    logging.basicConfig(level=os.environ.get("AMOEBA_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    command = typer.main.get_command(app)
    try:
        # standalone mode: typer/click report usage errors themselves (exit 2) and exit with
        # the command's return code; our own errors propagate to here.
        command.main(args=argv, prog_name="amoeba", standalone_mode=True)
    except AmoebaError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

if __name__ == "__main__":
    main()

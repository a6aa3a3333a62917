"""Errors a user can fix. The CLI prints them on one line and exits with code 2."""

from __future__ import annotations


class AmoebaError(ValueError):
    """Bad input: unknown name, malformed text, out-of-range value, corrupt file."""


class NotInstalledError(AmoebaError):
    """An optional runtime or model package is missing; the message says how to install it."""

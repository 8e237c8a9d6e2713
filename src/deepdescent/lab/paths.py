"""Objects named on the command line by an import path (``package.module:name`` or
``package.module.name``) or by an entry point of an installed package: the form is checked before
anything is imported, and every failure is one line naming the path."""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points as _found

_FORM = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?")


def entry_points(group: str) -> dict[str, str]:
    """What installed packages register under ``group``: name → "module:attribute"."""
    return {ep.name: ep.value for ep in _found(group=group)}


def is_path(text: str) -> bool:
    """Whether ``text`` has the form of an import path (a dot or a colon between names)."""
    return bool(_FORM.fullmatch(text)) and ("." in text or ":" in text)


def load(path: str, group: str, what: str, known: str) -> object:
    """The object at ``path`` (an entry point of ``group`` or an import path); ValueError naming
    ``what`` it should be and the ``known`` alternatives otherwise."""
    target = entry_points(group).get(path, path)
    if not _FORM.fullmatch(target):
        raise ValueError(f"invalid {what} {path!r}: an import path is dotted names such as package.module:name "
                         "(checked before anything is imported)")
    module, sep, attr = target.partition(":")
    if not sep:
        module, _, attr = target.rpartition(".")
    if not module or not attr:
        registered = ", ".join(entry_points(group)) or "none installed"
        raise ValueError(f"unknown {what} {path!r}: not {known}, not an entry point of {group!r} ({registered}), "
                         "and not an import path such as package.module:name")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as err:  # noqa: BLE001 - any failure of a foreign module's import is one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"cannot import {what} {path!r}: {type(err).__name__}: {first}") from None
    return obj

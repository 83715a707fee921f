"""`module:function` references in recipes (reward callables, judges, stage kinds) resolved
to the object they name, with one kind of error for every way it can fail."""

from __future__ import annotations

import builtins
import importlib
import re
from typing import Any

from align.errors import AlignError

# module.path:attribute[.attribute]: what a recipe may name. Checked before anything imports.
REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_reference(text: Any) -> bool:
    return isinstance(text, str) and bool(REFERENCE.match(text))


def import_object(spec: str, what: str = "reference", *, callable_: bool = True) -> Any:
    """The object `module:attr` names. `what` starts every message ("reward source 'x'")."""
    label = f"{what} {spec!r}"
    if not is_reference(spec):
        raise AlignError(f"{label} is not of the form module:function (e.g. my_rewards:exact_match).")
    module_name, _, attr_path = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any error while importing user code is the user's to fix
        raise AlignError(f"{label}: cannot import module '{module_name}' ({type(exc).__name__}: "
                         f"{exc}). It must be importable in the training process (installed, or "
                         "on PYTHONPATH).") from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise AlignError(f"{label}: module '{module_name}' has no attribute '{attr_path}'.")
        obj = getattr(obj, part)
    if callable_ and not builtins.callable(obj):
        raise AlignError(f"{label} resolves to a {type(obj).__name__}, which is not callable.")
    return obj

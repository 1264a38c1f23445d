"""Param values in Hydra's override grammar, which `dvc exp run -S key=value` reads, and nested
values under dotted keys, as `-S` and `dvc params diff` name them. Imports no TensorFlow."""

from __future__ import annotations

import re
from typing import Any

from mlpipe.params import ParamsError

_BARE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Text Hydra reads as the same string unquoted: no spaces, quotes, brackets, commas or colons.
_BARE_TEXT = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_TYPED_WORDS = {"true", "false", "null", "nan", "inf"}
# Hydra unescapes backslashes only before a quote or the closing quote; OmegaConf, which
# resolves the value next, only before `${`. Elsewhere a backslash stands for itself.
_ESCAPED = re.compile(r"(\\*)('|\$\{|$)")


def hydra_value(value: Any) -> str:
    """`value` as DVC's `-S` reads it back: text is quoted unless Hydra would read it back as
    the same string (a word such as `null` or `true` would not be)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _BARE_TEXT.match(value) and value.lower() not in _TYPED_WORDS:
            return value
        return "'" + _ESCAPED.sub(lambda m: 2 * m[1] + ("\\" + m[2] if m[2] else ""), value) + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        bad = [k for k in value if not _BARE_KEY.match(str(k))]
        if bad:
            raise ParamsError(f"keys {bad} cannot be passed to `dvc exp run -S`; rename them")
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise ParamsError(f"value {value!r} of type {type(value).__name__} is not a param value")


def dotted(values: dict, prefix: str = "") -> dict[str, Any]:
    """The leaves of nested `values` under dotted keys: {"train": {"epochs": 5}} gives
    {"train.epochs": 5}. An empty mapping is a leaf."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out |= dotted(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out

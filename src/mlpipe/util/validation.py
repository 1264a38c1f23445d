"""Strict params sections, and messages for pydantic's validation errors that name the key, what
is wrong and, for a typo, the nearest valid key. Imports no TensorFlow."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, loaded params never change, and
    true/false is no number (pydantic would read `epochs: true` as 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name or ""].annotation
        values = value if isinstance(value, list) else [value]
        values = list(value.values()) if isinstance(value, dict) else values
        if any(isinstance(v, bool) for v in values) and not _takes_bool(annotation):
            raise ValueError("true and false are not numbers; give a number")
        return value


def _takes_bool(annotation: Any) -> bool:
    """Whether a field of this type may hold true/false (anywhere, e.g. in a union)."""
    if annotation is bool or annotation is Any:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True  # a section checks its own fields
    return any(_takes_bool(arg) for arg in typing.get_args(annotation))


def describe(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    """One line for one of pydantic's errors in validating `root`: the dotted key, what is
    wrong, and for an unknown key the nearest valid one and every valid key beside it."""
    # Drop the tags pydantic adds for union members (`literal['x']`, `constrained-float`).
    loc = tuple(part for part in error["loc"] if not _UNION_TAG.match(str(part)))
    path = _format_path(loc)
    if error["type"] == "extra_forbidden":
        key = str(loc[-1])
        valid = _fields_at(root, loc[:-1])
        hint = ""
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        if close:
            hint = f"; did you mean `{close[0]}`?"
        where = f"`{_format_path(loc[:-1])}`" if loc[:-1] else "the top level"
        return f"unknown key `{path}`{hint} Valid keys at {where}: {', '.join(valid)}"
    if error["type"] == "missing":
        return f"`{path}`: required key is missing"
    got = error.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    if error["type"] == "string_pattern_mismatch":
        if "[key]" in path:  # a mapping's key: name the mapping, not the key's position
            path = _format_path(tuple(p for p in loc[:-2]))
        return (
            f"`{path}`: {got!r} is not a valid name: use lowercase letters, digits and "
            "underscores, starting with a letter"
        )
    message = error["msg"].removeprefix("Value error, ")
    return f"`{path}`: {message}{got_text}"


def merge_alternatives(lines: list[str]) -> list[str]:
    """One line per key: pydantic reports each member of a union (`'auto'`, an integer)
    separately; `Input should be 'auto' or a valid integer (got 'fast')` says it at once."""
    merged: dict[str, list[str]] = {}
    for line in lines:
        match = re.match(r"^(`[^`]+`): Input should be (.*?)( \(got .*\))?$", line)
        key = match[1] if match else line
        merged.setdefault(key, []).append(line)
    out = []
    for key, group in merged.items():
        parts = [re.match(r"^`[^`]+`: Input should be (.*?)( \(got .*\))?$", g) for g in group]
        if len(group) > 1 and all(parts):
            wanted = " or ".join(p[1] for p in parts if p)
            out.append(f"{key}: Input should be {wanted}{parts[0][2] or ''}")  # type: ignore[index]
        else:
            out += group
    return out


_UNION_TAG = re.compile(r"^([a-z-]+\[.*\]|constrained-[a-z]+)$")


def _format_path(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fields_at(root: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the section found by following `loc` from `root`."""
    model = root
    for part in loc:
        if not isinstance(part, str) or part not in model.model_fields:
            break
        sub = section_type(model.model_fields[part].annotation)
        if sub is None:
            break
        model = sub
    return list(model.model_fields)


def section_type(annotation: Any) -> type[BaseModel] | None:
    """The model of a nested section, from its annotation (`Section` or `Section | None`)."""
    candidates = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None

"""Example presets: YAML files of the params that differ from `params.yaml`, turned into the
`-S key=value` arguments of `dvc exp run`.

A preset is not a second config: DVC writes its values into the experiment's `params.yaml`,
which stays the one record of what ran, and `dvc exp show` lists them beside other runs.
Imports no TensorFlow.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from mlpipe.config import DEFAULT_PARAMS_FILE, Params, ParamsError, _section_type, parse_params

_BARE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Text Hydra reads as the same string unquoted: no spaces, quotes, brackets, commas or colons.
_BARE_TEXT = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_TYPED_WORDS = {"true", "false", "null", "nan", "inf"}


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of params, got {type(raw).__name__}")
    return raw


def merged(base: dict, preset: dict, model: type[BaseModel] = Params) -> dict:
    """`base` with the preset's values: sections are merged key by key, any other value (a list,
    or a mapping such as train.loss_weights) is replaced whole."""
    out = dict(base)
    for key, value in preset.items():
        section = _section_of(model, key)
        if section is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value, section)
        else:
            out[key] = value
    return out


def overrides(preset: dict, base: dict, model: type[BaseModel] = Params, prefix: str = "") -> list:
    """DVC's (Hydra's) override strings that turn `base` into `merged(base, preset)`."""
    out = []
    for key, value in preset.items():
        path = f"{prefix}{key}"
        section = _section_of(model, key)
        current = base.get(key)
        if section is not None and isinstance(value, dict) and isinstance(current, dict):
            out += overrides(value, current, section, f"{path}.")
        elif key not in base:
            out.append(f"+{path}={hydra_value(value)}")
        elif isinstance(current, dict):
            # Hydra merges a mapping into a mapping, and refuses new keys in it: deleting it
            # first makes the new one a replacement.
            out += [f"~{path}", f"+{path}={hydra_value(value)}"]
        else:
            out.append(f"{path}={hydra_value(value)}")
    return out


def hydra_value(value: Any) -> str:
    """`value` in Hydra's override grammar. Text is quoted unless Hydra would read it back as
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
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        bad = [k for k in value if not _BARE_KEY.match(str(k))]
        if bad:
            raise ParamsError(f"keys {bad} cannot be passed to `dvc exp run -S`; rename them")
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise ParamsError(f"value {value!r} of type {type(value).__name__} is not a param value")


def preset_args(preset_file: str | Path, params_file: str | Path = DEFAULT_PARAMS_FILE) -> list:
    """`-S` arguments for `dvc exp run` that apply the preset to `params_file`, after checking
    the result against the params schema (a typo in a preset fails here, naming the key)."""
    preset = read_yaml(preset_file)
    base = read_yaml(params_file)
    parse_params(merged(base, preset), source=f"{preset_file} over {params_file}")
    return [arg for override in overrides(preset, base) for arg in ("-S", override)]


def _section_of(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    field = model.model_fields.get(key)
    return None if field is None else _section_type(field.annotation)

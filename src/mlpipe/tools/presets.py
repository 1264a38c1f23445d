"""Example presets: YAML files of the params that differ from the committed `params.yaml`,
turned into the `-S key=value` arguments of `dvc exp run`.

A preset is not a second config: DVC writes its values into the experiment's `params.yaml`,
which stays the one record of what ran, and `dvc exp show` lists them beside other runs.
Imports no TensorFlow.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from mlpipe.params import DEFAULT_PARAMS_FILE, Params, ParamsError, _section_type, parse_params
from mlpipe.params import read_yaml as load_yaml

_BARE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Text Hydra reads as the same string unquoted: no spaces, quotes, brackets, commas or colons.
_BARE_TEXT = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_TYPED_WORDS = {"true", "false", "null", "nan", "inf"}


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    raw = load_yaml(path)
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


def overrides(
    current: dict, target: dict, model: type[BaseModel] = Params, prefix: str = ""
) -> list[str]:
    """DVC's (Hydra's) override strings that turn the params `current` into `target`."""
    out = []
    for key, value in target.items():
        path = f"{prefix}{key}"
        section = _section_of(model, key)
        now = current.get(key)
        if key not in current:
            out.append(f"+{path}={hydra_value(value)}")
        elif section is not None and isinstance(value, dict) and isinstance(now, dict):
            out += overrides(now, value, section, f"{path}.")
        elif now == value and type(now) is type(value):
            continue
        elif isinstance(now, dict):
            # Hydra merges a mapping into a mapping, and refuses new keys in it: deleting it
            # first makes the new one a replacement.
            out += [f"~{path}", f"+{path}={hydra_value(value)}"]
        else:
            out.append(f"{path}={hydra_value(value)}")
    out += [f"~{prefix}{key}" for key in current if key not in target]
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


def committed(params_file: str | Path, ref: str = "HEAD") -> dict | None:
    """`params_file` as committed at `ref`, or None outside git or where it is not committed."""
    path = Path(params_file).resolve()
    try:
        run: dict[str, Any] = dict(cwd=path.parent, capture_output=True, text=True, check=True)
        root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], **run).stdout.strip())
        name = path.relative_to(root).as_posix()
        text = subprocess.run(["git", "show", f"{ref}:{name}"], **run).stdout
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None
    return yaml.safe_load(text) or {}


def preset_args(preset_file: str | Path, params_file: str | Path = DEFAULT_PARAMS_FILE) -> list:
    """`-S` arguments for `dvc exp run` that make `params_file` the committed params with the
    preset applied, whatever the workspace holds (after `dvc exp run`, the previous experiment's
    params), checked against the params schema first: a typo in a preset fails here."""
    preset = read_yaml(preset_file)
    current = read_yaml(params_file)
    base = committed(params_file)
    target = merged(current if base is None else base, preset)
    parse_params(target, source=f"{preset_file} over {params_file}")
    return [arg for override in overrides(current, target) for arg in ("-S", override)]


def _section_of(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    field = model.model_fields.get(key)
    return None if field is None else _section_type(field.annotation)

"""Example presets: YAML files of the params that differ from the committed `params.yaml`,
turned into the `-S key=value` arguments of `dvc exp run`.

A preset is not a second config: DVC writes its values into the experiment's `params.yaml`,
which stays the one record of what ran, and `dvc exp show` lists them beside other runs.
Imports no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from mlpipe.params import DEFAULT_PARAMS_FILE, Params, ParamsError, parse_params
from mlpipe.params import read_yaml as load_yaml
from mlpipe.util import git
from mlpipe.util.overrides import hydra_value
from mlpipe.util.validation import section_type


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


def committed(params_file: str | Path, ref: str = "HEAD") -> dict | None:
    """`params_file` as committed at `ref`, or None outside git or where it is not committed."""
    text = git.committed_text(params_file, ref)
    return None if text is None else yaml.safe_load(text) or {}


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
    return None if field is None else section_type(field.annotation)

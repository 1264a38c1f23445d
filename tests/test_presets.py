"""Example presets become `dvc exp run -S` arguments that DVC applies to params.yaml."""

import shlex
import subprocess

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from conftest import ROOT
from mlpipe.params import ParamsError, load_params, parse_params
from mlpipe.tools import cli, presets
from mlpipe.util.overrides import hydra_value

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def applied_by_dvc(params_file, preset_file):
    """params.yaml as `dvc exp run` leaves it after the preset's -S arguments."""
    args = presets.preset_args(preset_file, params_file)
    assert args[::2] == ["-S"] * (len(args) // 2)
    apply_overrides(params_file, args[1::2])
    return load_params(params_file)


@pytest.mark.parametrize("preset", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_applies_to_params_exactly_as_merged(tmp_path, preset):
    params_file = tmp_path / "params.yaml"
    params_file.write_text((ROOT / "params.yaml").read_text())
    base = yaml.safe_load(params_file.read_text())
    expected = parse_params(presets.merged(base, presets.read_yaml(preset)))
    assert applied_by_dvc(params_file, preset) == expected
    if preset.stem == "tabular":  # the recipe for any data: model and train only
        assert set(presets.read_yaml(preset)) == {"model", "train"}
        assert expected.data == parse_params(base).data
        return
    assert expected.data.target == "median_house_value"
    assert set(expected.evaluate.thresholds) == {"rmse"}


def test_mappings_are_replaced_and_odd_text_survives(tmp_path):
    params_file = tmp_path / "params.yaml"
    base = {
        "data": {"source": "data/raw/x.csv", "target": "y", "categorical": ["a"]},
        "train": {"loss_weights": None, "class_weight": {"a": 2.0}},
        "evaluate": {"thresholds": {"accuracy": 0.9, "log_loss": 1.0}},
    }
    params_file.write_text(yaml.safe_dump(base))
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "data": {"target": "null", "categorical": ["it's, odd: [x]", "true"]},
                "train": {"class_weight": {"b": 3}, "early_stopping": {"patience": 4}},
                "evaluate": {"thresholds": {"accuracy": 0.95}},
            }
        )
    )
    params = applied_by_dvc(params_file, preset)
    assert params.data.target == "null"
    assert params.data.categorical == ["it's, odd: [x]", "true"]
    assert params.train.class_weight == {"b": 3.0}
    assert params.train.early_stopping.patience == 4  # a key absent from the file is added
    assert params.evaluate.thresholds == {"accuracy": 0.95}


# Text that Hydra or OmegaConf would read as another value, or that needs escaping inside quotes
ODD_TEXT = [
    *("auto", "relu", "data/raw/x.csv", "1e-3", "null", "True", "inf", "", " x", "a b", "é"),
    *("it's", "x:y", "a,b", "[x]", "a=b", "$x", "${seed}", "\\${seed}"),
    *("C:\\data\\", "a\\b", "a\\'b", "\\"),
]


def test_text_reaches_params_yaml_as_written(tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text("seed: 1\n")
    apply_overrides(params_file, [f"+k{i}={hydra_value(text)}" for i, text in enumerate(ODD_TEXT)])
    written = yaml.safe_load(params_file.read_text())
    assert [written[f"k{i}"] for i in range(len(ODD_TEXT))] == ODD_TEXT


def test_text_is_quoted_only_where_hydra_needs_it():
    assert [hydra_value(v) for v in ("auto", "data/raw/x.csv", "null", "1e-3")] == [
        "auto",
        "data/raw/x.csv",
        "'null'",
        "'1e-3'",
    ]
    assert hydra_value(("a", 1, None, [True])) == "[a,1,null,[true]]"
    assert hydra_value({"a": 0.5, "b": "x y"}) == "{a:0.5,b:'x y'}"
    with pytest.raises(ParamsError, match="cannot be passed to `dvc exp run -S`"):
        hydra_value({"a b": 1})


def test_a_preset_applies_to_the_committed_params_not_the_last_experiment(tmp_path):
    """`dvc exp run` leaves the last experiment's params in the workspace; the next example
    must not inherit them."""
    params_file = tmp_path / "params.yaml"
    params_file.write_text((ROOT / "params.yaml").read_text())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "params"]):
        subprocess.run([*git, *command], cwd=tmp_path, check=True)
    applied_by_dvc(params_file, ROOT / "examples" / "california_subclass.yaml")
    assert load_params(params_file).model.residual_blocks == 2
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    preset = ROOT / "examples" / "california_wide_deep.yaml"
    expected = parse_params(presets.merged(committed, presets.read_yaml(preset)))
    assert applied_by_dvc(params_file, preset) == expected
    assert expected.model.residual_blocks == 0 and expected.model.api == "functional"


def test_a_typo_in_a_preset_names_the_key_and_the_file(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("model:\n  wide_colums: [a]\n")
    with pytest.raises(ParamsError, match=r"(?s)bad\.yaml.*did you mean `wide_columns`") as info:
        presets.preset_args(preset, ROOT / "params.yaml")
    assert "model.wide_colums" in str(info.value)


def test_cli_prints_arguments_a_shell_splits_back(capsys):
    preset = ROOT / "examples" / "california_wide_deep.yaml"
    cli.main(["preset-args", str(preset), "--file", str(ROOT / "params.yaml")])
    printed = shlex.split(capsys.readouterr().out)
    assert printed == presets.preset_args(preset, ROOT / "params.yaml")
    assert "model.wide_columns=[median_income,housing_median_age,ocean_proximity]" in printed

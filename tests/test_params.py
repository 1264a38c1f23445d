import pytest
import yaml
from pydantic import BaseModel, ValidationError

from conftest import ROOT
from mlpipe.params import (
    DEFAULT_PARAMS_FILE,
    Params,
    ParamsError,
    load_params,
    params_hash,
    parse_params,
)


def error_of(raw) -> str:
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    return str(info.value)


def test_repo_params_are_valid_and_show_every_knob():
    raw = yaml.safe_load((ROOT / DEFAULT_PARAMS_FILE).read_text())
    load_params(ROOT / DEFAULT_PARAMS_FILE)

    def missing(model: type[BaseModel], section: dict, prefix: str) -> list[str]:
        gaps = []
        for name, field in model.model_fields.items():
            if name not in section:
                gaps.append(prefix + name)
            elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                gaps += missing(field.annotation, section[name], f"{prefix}{name}.")
        return gaps

    assert missing(Params, raw, "") == []


def test_empty_file_gives_the_schema_defaults():
    params = parse_params({})
    assert params.model.hidden_units == [300, 100]
    assert params.train.optimizer.name == "adam"
    assert params.data.source == "sklearn:digits"


def test_misspelled_nested_key_names_path_and_suggests():
    message = error_of({"train": {"optimizer": {"learnin_rate": 0.1}}})
    assert "`train.optimizer.learnin_rate`" in message
    assert "did you mean `learning_rate`?" in message


def test_misspelled_top_level_key_suggests_section():
    message = error_of({"trian": {"epochs": 3}})
    assert "`trian`" in message and "did you mean `train`?" in message


def test_unknown_key_without_close_match_lists_valid_keys():
    message = error_of({"model": {"colour": "red"}})
    assert "did you mean" not in message
    assert "hidden_units" in message


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"optimizer": {"learning_rate": -0.1}}}, "train.optimizer.learning_rate"),
        ({"model": {"hidden_units": []}}, "model.hidden_units"),
        ({"model": {"hidden_units": [64, 0]}}, "model.hidden_units[1]"),
        ({"data": {"test_size": 1.0}}, "data.test_size"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"model": {"activation": "relu6x"}}, "model.activation"),
        ({"seed": -1}, "seed"),
    ],
)
def test_wrong_type_or_range_names_the_key(raw, key):
    assert f"`{key}`" in error_of(raw)


def test_splits_must_leave_training_rows():
    message = error_of({"data": {"test_size": 0.6, "valid_size": 0.4}})
    assert "`data`" in message and "test_size + valid_size" in message


def test_every_problem_is_reported_at_once():
    message = error_of({"seed": -1, "train": {"batch_sise": 8}})
    assert "2 invalid" in message and "`seed`" in message and "batch_size" in message


def test_absurd_but_legal_learning_rate_is_accepted():
    params = parse_params({"train": {"optimizer": {"learning_rate": 1e6}}})
    assert params.train.optimizer.learning_rate == 1e6


def test_params_are_frozen():
    params = parse_params({})
    with pytest.raises(ValidationError):
        params.seed = 3


def test_params_hash_covers_effective_values_not_spelling():
    explicit = parse_params({"train": {"epochs": 100}})
    implicit = parse_params({})
    changed = parse_params({"train": {"epochs": 99}})
    sections = ("seed", "train")
    assert params_hash(explicit, sections) == params_hash(implicit, sections)
    assert params_hash(changed, sections) != params_hash(implicit, sections)
    assert params_hash(changed, ("model",)) == params_hash(implicit, ("model",))


def test_load_params_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)


def test_learning_rate_is_a_positive_number_or_auto():
    params = parse_params({"train": {"optimizer": {"learning_rate": "auto"}}})
    assert params.train.optimizer.learning_rate == "auto"
    message = error_of({"train": {"optimizer": {"learning_rate": "autox"}}})
    assert "`train.optimizer.learning_rate`: Input should be 'auto'" in message
    assert "constrained" not in message
    message = error_of({"lr_find": {"min_lr": 1.0, "max_lr": 0.1}})
    assert "`lr_find`: min_lr (1.0) must be below max_lr (0.1)" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"train": {"monitor": "val_f1"}},
            "`train.monitor`: not a value Keras reports; choose val_loss, val_accuracy or "
            "val_auc (classification), val_rmse or val_mae (regression); with model.aux_output, "
            "also per output: val_main_loss,",
        ),
        (
            {"train": {"epochs": True}},
            "`train.epochs`: true and false are not numbers; give a number (got True)",
        ),
        (
            {"model": {"hidden_units": [64, True]}},
            "`model.hidden_units`: true and false are not numbers; give a number",
        ),
        (
            {"train": {"loss_weights": {"main": 1.0, "aux": True}}},
            "`train.loss_weights`: true and false are not numbers; give a number",
        ),
        (
            {"model": {"dropout": False}},
            "`model.dropout`: true and false are not numbers; give a number (got False)",
        ),
        (
            {"data": {"features": {"include": []}}},
            "`data.features.include`: an empty list selects no feature; remove the key (or set "
            "it to null) to use every column with no other role",
        ),
        (
            {"export": {"formats": ["onnx"]}},
            "`export.formats`: onnx is not listed in export.formats (keras, saved_model) but "
            "switched on by its own key: export.onnx: true",
        ),
        (
            {"train": {"steps_per_execution": "fast"}},
            "`train.steps_per_execution`: Input should be 'auto' or a valid integer",
        ),
        (
            {"evaluate": {"thresholds": {"F1": 0.9}}},
            "`evaluate.thresholds`: 'F1' is not a valid name: use lowercase letters, digits and "
            "underscores",
        ),
        (
            {"data": {"csv": {"encoding": "utf-9"}}},
            "`data.csv.encoding`: unknown text encoding; use a Python codec name such as utf-8, "
            "cp1252, latin-1 or utf-16 (got 'utf-9')",
        ),
        (
            {"data": {"source": "a.csv", "target_map": {"a.": "a"}}},
            "data.target_map renames labels of data.target: name the target",
        ),
        (
            {"model": {"activation": "relu6"}},
            "`model.activation`: Input should be 'relu', 'leaky_relu', 'elu', 'selu', 'gelu', "
            "'silu', 'swish', 'tanh' or 'sigmoid' (got 'relu6')",
        ),
    ],
)
def test_refusals_say_what_is_valid(raw, expected):
    assert expected in error_of(raw)


def test_a_missing_params_file_says_where_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError) as info:
        load_params()
    assert str(info.value) == (
        f"params.yaml: file not found in {tmp_path}; run from the project root (the folder of "
        "dvc.yaml), restore it with `git checkout -- params.yaml`, or start from the README's "
        "params"
    )


def test_a_number_yaml_reads_as_text_is_still_a_number():
    # PyYAML reads 1e-5 (no dot) as a string: a number field still takes it.
    params = parse_params(yaml.safe_load("lr_find:\n  min_lr: 1e-5\n"))
    assert params.lr_find.min_lr == 1e-5

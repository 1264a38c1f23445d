"""The three Keras APIs behind the same preprocessing: each builds, trains, saves, reloads and
predicts identically; several outputs are trained, monitored and evaluated; wrong settings fail
before training, naming the key."""

import json

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from conftest import ROOT, run_stage, tiny_params, write_prepared
from mlpipe import MlpipeError, dataset, features
from mlpipe.modeling import models, networks
from mlpipe.params import ParamsError, parse_params
from mlpipe.schema import Schema, read_schema, read_splits
from mlpipe.serving import export, predict
from mlpipe.training import fit, losses, lr_find
from mlpipe.util import runtime
from mlpipe.util.tables import read_table

HOUSING = {
    "source": "data/raw/california_housing.csv",
    "target": "median_house_value",
    "target_scale": 100000,
}
WIDE = ["median_income", "ocean_proximity"]
# (data set, model params, train params): every API, with and without an auxiliary output.
CASES = {
    "sequential": ("housing", {}, {}),
    "functional": ("housing", {"api": "functional", "wide_columns": WIDE}, {}),
    "functional_aux": (
        "housing",
        {"api": "functional", "wide_columns": WIDE, "aux_output": True},
        {"loss_weights": {"main": 0.9, "aux": 0.1}, "monitor": "val_main_rmse"},
    ),
    "subclass_aux": (
        "housing",
        {"api": "subclass", "residual_blocks": 2, "aux_output": True},
        {"loss_weights": {"main": 0.9, "aux": 0.1}},
    ),
    "subclass_digits": ("digits", {"api": "subclass", "residual_blocks": 1}, {}),
    "functional_aux_digits": (
        "digits",
        {"api": "functional", "aux_output": True},
        {"monitor": "val_main_accuracy"},
    ),
}


@pytest.fixture(scope="module")
def housing():
    """(splits, schema) of 200 rows of the California file: 10 with a missing total_bedrooms,
    and the text column ocean_proximity."""
    params = parse_params({"seed": 0, "data": HOUSING})
    frame = read_table(ROOT / HOUSING["source"], params.data.csv)
    gaps = frame[frame["total_bedrooms"].isna()].head(10)
    frame = pd.concat([gaps, frame.dropna().sample(190, random_state=0)], ignore_index=True)
    return dataset.prepare(frame, None, params.data, params.seed)


def case_params(model, train, **sections):
    return tiny_params(
        model={"hidden_units": [16], **model}, train={"epochs": 2, **train}, **sections
    )


def train_two_epochs(splits, schema, params, folder):
    """What the build and train stages do, in memory: the trained model and its test inputs."""
    runtime.seed_everything(params.seed)
    built = models.build_model(params.model, schema, splits["train"])
    rate = params.train.optimizer.learning_rate
    dirs = fit.RunDirs.inside(folder)
    model, summary = fit.train(
        built, params.train, splits, schema, dirs, seed=params.seed, learning_rate=rate
    )
    assert summary["epochs_run"] == 2
    # Keras logs every value train.monitor may name, under the names it accepts (DVCLive files
    # `val_<name>` as eval/<name>).
    outputs = models.output_names(models.split_model(model)[1])
    logged = {f"val_{p.stem}" for p in (folder / "live/plots/metrics/eval").glob("*.tsv")}
    assert set(losses.monitor_choices(schema, outputs)) <= logged
    return model, features.model_inputs(splits["test"], schema)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_each_api_trains_saves_reloads_and_predicts_identically(case, housing, digits, tmp_path):
    data, model_params, train_params = CASES[case]
    splits, schema = housing if data == "housing" else digits
    params = case_params(model_params, train_params)
    model, inputs = train_two_epochs(splits, schema, params, tmp_path)
    expected = features.predict(model, inputs, 64)
    names = models.output_names(models.split_model(model)[1])
    assert names == (["main", "aux"] if params.model.aux_output else names[:1])
    if len(names) > 1:
        assert sorted(expected) == sorted(names)

    models.save_model_folder(model, tmp_path / "model")
    saved = sorted(p.name for p in (tmp_path / "model").iterdir())
    if params.model.api == "subclass":
        assert saved == ["core.json", "core.weights.h5", "preprocess.keras"]
    else:
        assert saved == ["model.keras"]
    again = models.load_model_folder(tmp_path / "model")
    got = features.predict(again, inputs, 64)
    for name in names if len(names) > 1 else [None]:
        pick = (lambda raw, n=name: raw[n]) if name else (lambda raw: raw)
        np.testing.assert_array_equal(pick(got), pick(expected))

    # Exported, every format takes the raw columns and gives the main output's predictions;
    # `mlpipe predict` reads the export folder.
    formats = {"onnx": True, "h5": True} if len(names) > 1 else {}
    out = tmp_path / "export"
    out.mkdir()
    export.write_formats(again, schema, params.export.model_copy(update=formats), out, inputs)
    main = models.main_output(expected)
    # The .keras file holds Keras's own layers only (a subclass as the Functional network it
    # runs), and predicts exactly as the model trained.
    keras_file = models.load_model(out / export.KERAS_FILE)
    plain = features.predict(keras_file, inputs, 64)
    for name in names if len(names) > 1 else [None]:
        pick = (lambda raw, n=name: raw[n]) if name else (lambda raw: raw)
        np.testing.assert_array_equal(pick(plain), pick(expected))
    served = tf.saved_model.load(str(out / export.SAVED_MODEL_DIR / "1"))
    feed = {
        name: tf.constant(values.astype(str) if values.dtype == object else values)
        for name, values in inputs.items()
    }
    got = served.signatures["serving_default"](**feed)
    if schema.task == "regression":
        assert sorted(got) == ["predictions"]
        np.testing.assert_allclose(got["predictions"].numpy(), main[:, 0], rtol=1e-5, atol=1e-6)
    else:
        assert sorted(got) == ["classes", "predicted_class", "scores"]
        np.testing.assert_allclose(got["scores"].numpy(), main, rtol=1e-5, atol=1e-6)
        labels = [str(c).encode() for c in schema.classes]
        assert got["classes"].numpy().tolist() == [labels] * len(main)
        assert got["predicted_class"].numpy().tolist() == [labels[i] for i in main.argmax(1)]
    if formats:
        h5 = keras.saving.load_model(
            out / export.H5_FILE, custom_objects=features.h5_custom_objects()
        )
        np.testing.assert_allclose(
            models.main_output(features.predict(h5, inputs, 64)), main, rtol=1e-5, atol=1e-6
        )
    splits["test"].to_csv(tmp_path / "rows.csv", index=False)
    model, meta = predict.load(out)
    assert predict.predict_file(model, meta, tmp_path / "rows.csv", tmp_path / "p.csv") == len(main)
    predicted = pd.read_csv(tmp_path / "p.csv")["prediction"]
    if schema.task == "regression":
        np.testing.assert_allclose(predicted, main[:, 0], rtol=1e-5, atol=1e-5)
    else:
        assert (predicted == main.argmax(axis=1)).all()


def test_range_test_runs_on_two_outputs(housing):
    splits, schema = housing
    params = case_params({"api": "functional", "wide_columns": WIDE, "aux_output": True}, {})
    preprocessor, core = models.split_model(
        models.build_model(params.model, schema, splits["train"])
    )
    outputs = models.output_names(core)
    x = features.to_numpy(features.transform(preprocessor, splits["train"], schema))
    y = features.encode_target(splits["train"][schema.target], schema)
    x, y = losses.label_outputs({"train": (x, y)}, outputs)["train"]
    loss, loss_weights = losses.output_losses({"main": 0.9, "aux": 0.1}, schema, outputs)
    assert loss == {"main": "mse", "aux": "mse"} and loss_weights == {"main": 0.9, "aux": 0.1}
    before = core.get_weights()
    result = lr_find.range_test(
        core,
        x,
        y,
        optimizer=keras.optimizers.Adam(),
        loss=loss,
        loss_weights=loss_weights,
        min_lr=1e-4,
        max_lr=1.0,
        steps=8,
        batch_size=16,
        seed=0,
        smoothing=0.5,
        stop_factor=100.0,
    )
    assert len(result["losses"]) == 8 and np.isfinite(result["losses"]).all()
    for now, then in zip(core.get_weights(), before, strict=True):
        np.testing.assert_array_equal(now, then)


def test_each_path_has_its_own_input_and_encoding(housing):
    splits, schema = housing
    params = case_params({"api": "functional", "wide_columns": WIDE, "deep_columns": None}, {})
    preprocessor, core = models.split_model(
        models.build_model(params.model, schema, splits["train"])
    )
    train = features.to_numpy(features.transform(preprocessor, splits["train"], schema))
    income = splits["train"]["median_income"]
    # wide: median_income alone, standardized on its own training mean and std (clipped at 5)
    expected = np.clip((income - income.mean()) / income.std(ddof=0), -5, 5)
    np.testing.assert_allclose(train["wide"][:, 0], expected, rtol=1e-4, atol=1e-5)
    out = features.transform(preprocessor, splits["test"], schema)
    # wide: median_income, and ocean_proximity one-hot over its levels in training and unseen
    levels = len(features.vocabulary(splits["train"], "ocean_proximity")) + 1
    assert out["wide"].shape == (len(splits["test"]), 1 + levels)
    assert out["deep"].shape[1] == 8 + levels
    assert sorted(t.name for t in core.inputs) == ["deep", "wide"]


@pytest.mark.slow
def test_subclass_weights_round_trip_without_the_optimizer(housing, tmp_path):
    splits, schema = housing
    params = case_params({"api": "subclass", "residual_blocks": 3, "aux_output": True}, {})
    model, _ = train_two_epochs(splits, schema, params, tmp_path)
    models.save_model_folder(model, tmp_path / "model")
    config = json.loads((tmp_path / "model" / models.CORE_CONFIG_FILE).read_text())
    assert config["class_name"] == "WideAndDeepModel"
    assert config["config"]["residual_blocks"] == 3 and config["config"]["hidden_units"] == [16]
    with h5py.File(tmp_path / "model" / models.CORE_WEIGHTS_FILE) as weights:
        assert "optimizer" not in weights
    again = models.load_model_folder(tmp_path / "model")
    core = models.split_model(again)[1]
    assert isinstance(core, networks.WideAndDeepModel) and len(core.blocks) == 3
    for saved, trained in zip(
        core.get_weights(), models.split_model(model)[1].get_weights(), strict=True
    ):
        np.testing.assert_array_equal(saved, trained)
    text = models.summary_text(again)
    assert "core/residual_3" in text and "without their connections" in text

    config["class_name"] = "SomethingElse"
    (tmp_path / "model" / models.CORE_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(MlpipeError, match="unknown class 'SomethingElse'"):
        models.load_model_folder(tmp_path / "model")
    with pytest.raises(MlpipeError, match="not a model saved by this project"):
        models.load_model_folder(tmp_path)


@pytest.mark.slow
def test_evaluation_lists_every_output(housing, tmp_path):
    splits, schema = housing
    prepared = write_prepared(tmp_path / "prepared", housing)
    params = case_params(
        {"api": "functional", "wide_columns": WIDE, "aux_output": True},
        {"loss_weights": {"main": 0.9, "aux": 0.1}},
        data=HOUSING,
        evaluate={"baselines": False},
    )
    (tmp_path / "params.yaml").write_text(json.dumps(params.model_dump(mode="json")))
    model = models.build_model(params.model, schema, splits["train"])
    models.save_model_folder(model, tmp_path / "model")
    args = [str(prepared), "model", "evaluate.json", "details.json", "plots"]
    result = run_stage("evaluate", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scores = json.loads((tmp_path / "details.json").read_text())
    headline = json.loads((tmp_path / "evaluate.json").read_text())
    assert headline == {name: scores[name] for name in ("rmse", "mae", "r2", "loss")}
    assert set(scores["outputs"]) == {"main", "aux"}
    for split in (scores, scores["valid"]):
        main, aux = split["outputs"]["main"], split["outputs"]["aux"]
        assert {"rmse", "mae", "r2", "loss"} <= set(main) and set(main) == set(aux)
        assert split["rmse"] == main["rmse"]  # the bare names are the main output's
        assert main["loss"] == pytest.approx(main["rmse"] ** 2, rel=1e-4)
        assert split["loss"] == pytest.approx(0.9 * main["loss"] + 0.1 * aux["loss"], abs=1e-5)
    assert main["rmse"] != aux["rmse"]
    rows = pd.read_csv(tmp_path / "plots" / "residuals.csv")
    raw = features.predict(model, features.model_inputs(splits["test"], schema), 64)
    np.testing.assert_allclose(rows["predicted"], raw["main"][:, 0], atol=1e-5)


def test_params_of_another_api_are_refused():
    with pytest.raises(ParamsError, match=r"`model`: wide_columns: \['a'\] apply to api"):
        parse_params({"model": {"wide_columns": ["a"]}})
    with pytest.raises(ParamsError, match="aux_output: True apply to api functional or subclass"):
        parse_params({"model": {"aux_output": True}})
    with pytest.raises(ParamsError, match="residual_blocks: 2 applies to api subclass"):
        parse_params({"model": {"api": "functional", "residual_blocks": 2}})


def test_columns_of_the_paths_are_checked_against_the_data(housing):
    _, schema = housing

    def paths(**model):
        return models.feature_paths(case_params({"api": "functional", **model}, {}).model, schema)

    assert paths()["wide"] == paths()["deep"] == schema.feature_names
    with pytest.raises(MlpipeError, match=r"model\.wide_columns: `income` is not a feature"):
        paths(wide_columns=["median_income", "income"])
    with pytest.raises(MlpipeError, match=r"model\.deep_columns: `median_house_value`"):
        paths(deep_columns=["median_house_value"])
    with pytest.raises(MlpipeError, match=r"\['population'\] are on neither path"):
        paths(
            wide_columns=["median_income"],
            deep_columns=[n for n in schema.feature_names if n != "population"],
        )


def test_loss_weights_and_monitor_must_name_outputs_the_model_has():
    regression = Schema(features=(), target="y", task="regression")
    with pytest.raises(MlpipeError, match=r"train\.loss_weights: `aux2` is not an output"):
        losses.check_loss_weights({"main": 1.0, "aux2": 0.5}, ["main", "aux"])
    with pytest.raises(MlpipeError, match=r"model\.aux_output: true adds `aux`"):
        losses.check_loss_weights({"aux": 0.1}, ["main"])
    with pytest.raises(MlpipeError, match=r"this model has one \(`main`\)"):
        losses.check_loss_weights({"main": 1.0}, ["main"])
    train = tiny_params(train={"monitor": "val_rmse"}).train
    with pytest.raises(MlpipeError, match="val_main_rmse"):
        losses.check_monitor(train, regression, ["main", "aux"])
    assert losses.monitor_mode("val_main_accuracy") == "max"
    assert losses.monitor_mode("val_aux_loss") == "min"


def train_args(folder, params: dict) -> list[str]:
    """The train stage's arguments after the prepared folder, with the lr_find record it needs."""
    optimizer = parse_params(params).train.optimizer
    (folder / "rate.json").write_text(json.dumps(lr_find.learning_rate_record(optimizer, None)))
    args = ["untrained", "model", "train.json", "--dvclive", "live", "--tensorboard", "tb"]
    return [*args, "--learning-rate", "rate.json"]


@pytest.fixture(scope="module")
def housing_dir(tmp_path_factory, housing):
    return write_prepared(tmp_path_factory.mktemp("housing"), housing)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "train", "message"),
    [
        (
            {"api": "functional", "wide_columns": ["median_incme"]},
            {},
            "model.wide_columns: `median_incme` is not a feature column",
        ),
        (
            {"api": "functional"},
            {"loss_weights": {"main": 0.9, "aux": 0.1}},
            "train.loss_weights: `aux` is not an output of this model, whose outputs are main",
        ),
        (
            {"api": "subclass", "aux_output": True},
            {"monitor": "val_mae"},
            "train.monitor: `val_mae` is not reported for a regression model with outputs main,",
        ),
    ],
    ids=["wide_column_not_in_data", "loss_weight_for_no_output", "monitor_of_one_output"],
)
def test_wrong_configurations_fail_before_training_naming_the_key(
    housing_dir, tmp_path, model, train, message
):
    params = case_params(model, train, data=HOUSING).model_dump(mode="json")
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    result = run_stage("build", str(housing_dir), "untrained", "summary.txt", cwd=tmp_path)
    if result.returncode == 0:
        result = run_stage("train", str(housing_dir), *train_args(tmp_path, params), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "epoch 1/" not in result.stderr and not (tmp_path / "model").exists()


@pytest.mark.slow
def test_class_weight_with_several_outputs_fails_before_training(prepared_dir, tmp_path):
    params = tiny_params(
        model={"hidden_units": [8], "api": "functional", "aux_output": True},
        train={"class_weight": "balanced"},
    )
    (tmp_path / "params.yaml").write_text(json.dumps(params.model_dump(mode="json")))
    schema = read_schema(prepared_dir)
    train = read_splits(prepared_dir)["train"]
    models.save_model_folder(
        models.build_model(params.model, schema, train), tmp_path / "untrained"
    )
    args = train_args(tmp_path, params.model_dump(mode="json"))
    result = run_stage("train", str(prepared_dir), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "train.class_weight is not supported by Keras for a model with several outputs" in (
        result.stderr
    )
    assert "(main, aux)" in result.stderr and "epoch 1/" not in result.stderr

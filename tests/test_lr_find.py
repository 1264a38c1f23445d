import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, stage_env, tiny_params
from mlpipe.params import ParamsError
from mlpipe.training import lr_find
from mlpipe.training.lr_find import LRFindError, learning_rate_record, read_learning_rate


def test_smooth_is_a_bias_corrected_moving_average():
    np.testing.assert_allclose(lr_find.smooth(np.full(5, 2.0), 0.9), np.full(5, 2.0))
    np.testing.assert_allclose(lr_find.smooth(np.array([1.0, 2.0]), 0.5), [1.0, 1.25 / 0.75])
    np.testing.assert_allclose(lr_find.smooth(np.array([3.0, 1.0]), 0.0), [3.0, 1.0])
    assert np.isnan(lr_find.smooth(np.array([1.0, np.nan, 1.0]), 0.9)[2])


def test_exploded_past_the_factor_or_at_a_non_finite_loss():
    assert not lr_find.exploded(np.array([2.0, 1.0, 3.9]), 4.0)
    assert lr_find.exploded(np.array([2.0, 1.0, 4.1]), 4.0)
    assert lr_find.exploded(np.array([2.0, 1.0, np.inf]), 4.0)


def valley(n=60):
    """A loss curve over 1e-5..10 with its minimum at 0.1 and its steepest fall at 0.01."""
    rates = np.geomspace(1e-5, 10, n)
    log_rate = np.log10(rates)
    loss = 2 - 1.5 / (1 + np.exp(-4 * (log_rate + 2))) + np.where(log_rate > -1, log_rate + 1, 0)
    return rates, loss


def test_suggestion_rules_on_a_known_curve():
    rates, loss = valley()
    lowest = rates[np.argmin(loss)]
    assert lr_find.suggest(rates, loss, "minimum") == pytest.approx(lowest / 10)
    assert lowest == pytest.approx(0.1, rel=0.2)
    assert lr_find.suggest(rates, loss, "steepest") == pytest.approx(0.01, rel=0.2)


def test_suggestion_ignores_the_curve_after_a_non_finite_loss():
    rates, loss = valley()
    broken = loss.copy()
    broken[45] = np.nan
    broken[50] = -100.0  # past the NaN: must not count as the minimum
    assert lr_find.suggest(rates, broken, "minimum") == lr_find.suggest(rates, loss, "minimum")


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (np.linspace(1, 5, 20), "never fell"),
        (np.array([2.0, 1.9, np.nan]), "exploded after 2 step"),
    ],
)
def test_curves_without_a_usable_minimum_say_what_to_change(loss, message):
    with pytest.raises(LRFindError, match=message) as info:
        lr_find.suggest(np.geomspace(1e-5, 10, len(loss)), loss, "minimum")
    assert "lr_find.min_lr" in str(info.value)


def test_batches_are_full_and_each_pass_is_reshuffled_reproducibly():
    first = list(lr_find.batch_rows(10, 4, seed=1, n_batches=5))
    assert [len(rows) for rows in first] == [4] * 5  # 2 full batches per pass; 2 rows left out
    assert [r.tolist() for r in first] == [r.tolist() for r in lr_find.batch_rows(10, 4, 1, 5)]
    assert first[0].tolist() != first[2].tolist()  # pass 2 has its own order
    assert len(set(np.concatenate(first[:2]).tolist())) == 8


def linear_regression(n=2048, seed=0):
    """Standardized, correlated features and a linear target: SGD on the MSE is stable below
    2 / (largest eigenvalue of the loss's Hessian), which is known in closed form."""
    rng = np.random.default_rng(seed)
    mix = np.array([[1, 0.8, 0, 0], [0, 0.6, 0, 0], [0, 0, 1, 0.5], [0, 0, 0, 1]])
    x = rng.normal(size=(n, 4)) @ mix
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.normal(size=n)).astype("float32")
    with_bias = np.hstack([x, np.ones((n, 1))])
    hessian = 2 * with_bias.T @ with_bias / n
    return x, y, 2 / np.linalg.eigvalsh(hessian).max()


def run_linear(x, y, **settings):
    import keras

    from mlpipe.util import runtime

    runtime.seed_everything(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    before = [w.copy() for w in model.get_weights()]
    options = dict(min_lr=1e-5, max_lr=10.0, steps=100, batch_size=64, seed=0, loss="mse")
    options.update(smoothing=0.9, stop_factor=4.0, **settings)
    result = lr_find.range_test(model, x, y, optimizer=keras.optimizers.SGD(), **options)
    for kept, now in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, now)  # the test's training is undone
    return result


@pytest.mark.slow
def test_suggestion_for_sgd_on_linear_regression_is_below_the_divergence_bound():
    x, y, bound = linear_regression()
    result = run_linear(x, y)
    summary = lr_find.summarize(result, "minimum")
    assert result["stopped_early"] and summary["tested_to"] > bound  # it found the blow-up
    assert bound / 20 < summary["suggested_learning_rate"] < bound
    np.testing.assert_allclose(result["smoothed"], lr_find.smooth(result["losses"], 0.9))
    assert summary["steps_run"] == len(result["losses"]) < 100


def test_range_test_is_deterministic():
    x, y, _ = linear_regression(n=256)
    assert run_linear(x, y, steps=20) == run_linear(x, y, steps=20)


def test_curve_outputs_skip_non_finite_points_and_draw_a_png():
    rates, loss = valley(20)
    loss[-1] = np.inf
    result = {
        "learning_rates": rates.tolist(),
        "losses": loss.tolist(),
        "smoothed": loss.tolist(),
        "initial_loss": 2.0,
        "steps_planned": 20,
        "stopped_early": True,
    }
    summary = lr_find.summarize(result, "minimum")
    assert summary["rule"].startswith("minimum: ") and summary["steps_run"] == 20
    assert lr_find.curve_csv(result).count("\n") == 1 + 19
    assert lr_find.curve_csv(None) == "step,learning_rate,loss,smoothed_loss\n"
    assert lr_find.curve_png(result, summary).startswith(b"\x89PNG")


def test_record_resolves_auto_and_refuses_a_stale_one(tmp_path):
    auto = tiny_params(train={"optimizer": {"learning_rate": "auto"}}).train.optimizer
    fixed = tiny_params(train={"optimizer": {"learning_rate": 0.002}}).train.optimizer
    record = tmp_path / "learning_rate.json"

    record.write_text(json.dumps(learning_rate_record(auto, 0.0042)))
    assert read_learning_rate(record, auto) == 0.0042
    assert auto.learning_rate == "auto"  # the params stay as written
    with pytest.raises(ParamsError, match="out of date"):
        read_learning_rate(record, fixed)

    record.write_text(json.dumps(learning_rate_record(fixed, 0.0042)))
    assert json.loads(record.read_text())["learning_rate"] == 0.002  # the suggestion is ignored
    assert read_learning_rate(record, fixed) == 0.002
    with pytest.raises(ParamsError, match="out of date"):
        read_learning_rate(record, auto)
    with pytest.raises(ParamsError, match="run the lr_find stage"):
        read_learning_rate(tmp_path / "missing.json", fixed)


OUTPUTS = ("learning_rate.json", "lr_find.json", "lr_find.csv", "lr_find.png")


def run_lr_find(tmp_path, prepared_dir, untrained, pythonpath=(), **sections):
    params = tiny_params(**sections).model_dump(mode="json")
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    env = stage_env()
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), env["PYTHONPATH"]])
    script = ROOT / "stages" / "lr_find.py"
    args = [sys.executable, str(script), str(prepared_dir), str(untrained), *OUTPUTS]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return {name: (tmp_path / name).read_bytes() for name in OUTPUTS}


@pytest.mark.slow
def test_stage_with_a_number_skips_the_test_without_tensorflow(tmp_path, prepared_dir):
    # A `tensorflow` that cannot be imported proves the stage never loads it.
    fake = tmp_path / "fake"
    (fake / "tensorflow").mkdir(parents=True)
    (fake / "tensorflow" / "__init__.py").write_text("raise ImportError('not here')\n")
    untrained = tmp_path / "absent"  # not read either
    first = run_lr_find(tmp_path, prepared_dir, untrained, pythonpath=[fake])
    assert json.loads(first["learning_rate.json"]) == {"learning_rate": 0.001, "source": "params"}
    assert json.loads(first["lr_find.json"])["range_test"] is False
    assert first["lr_find.csv"].decode().count("\n") == 1
    changed = {"min_lr": 1e-4, "max_lr": 1.0, "steps": 50, "rule": "steepest"}
    assert run_lr_find(tmp_path, prepared_dir, untrained, [fake], lr_find=changed) == first


@pytest.mark.slow
def test_stage_with_auto_records_its_suggestion_reproducibly(tmp_path, prepared_dir, digits):
    from mlpipe.modeling import models

    splits, schema = digits
    untrained = tmp_path / "untrained"
    model = models.build_model(tiny_params().model, schema, splits["train"])
    models.save_model_folder(model, untrained)
    auto = {"optimizer": {"learning_rate": "auto"}}
    first = run_lr_find(tmp_path, prepared_dir, untrained, train=auto)
    summary = json.loads(first["lr_find.json"])
    record = json.loads(first["learning_rate.json"])
    assert record == {"learning_rate": summary["suggested_learning_rate"], "source": "lr_find"}
    assert 1e-4 < record["learning_rate"] < 0.1  # Adam on standardized digits
    assert summary["steps_planned"] == len(splits["train"]) // 32
    assert first["lr_find.csv"].decode().count("\n") == 1 + summary["steps_run"]
    assert first["lr_find.png"].startswith(b"\x89PNG")
    assert run_lr_find(tmp_path, prepared_dir, untrained, train=auto) == first


def test_log_scale_template_is_where_dvc_looks():
    template = json.loads((ROOT / ".dvc/plots/log_x.json").read_text())
    assert template["encoding"]["x"]["scale"] == {"type": "log"}

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import stage_env
from mlpipe.tools import cli


def test_check_accepts_valid_and_rejects_typo(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  optimizer:\n    learning_rate: 0.01\n")
    cli.main(["params", "check", "--file", str(good)])
    assert "valid" in capsys.readouterr().out

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  optimizer:\n    learnin_rate: 0.01\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["params", "check", "--file", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "learnin_rate" in err and "did you mean `learning_rate`?" in err


def test_show_fills_defaults(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("seed: 5\n")
    cli.main(["params", "show", "--file", str(path)])
    out = capsys.readouterr().out
    assert "seed: 5" in out and "hidden_units:" in out and "learning_rate: 0.001" in out


def test_schema_is_json_schema(capsys):
    cli.main(["params", "schema"])
    schema = json.loads(capsys.readouterr().out)
    assert "train" in schema["properties"]


def test_console_script_is_installed_and_imports_no_tensorflow(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    script = Path(sys.executable).with_name("mlpipe")
    result = subprocess.run(
        [str(script), "params", "check"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    probe = "import sys; from mlpipe.tools import cli; assert 'tensorflow' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


def test_python_m_mlpipe_is_the_mlpipe_command(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 1\ntrain: {epochs: 0}\n")
    result = subprocess.run(
        [sys.executable, "-m", "mlpipe", "params", "check"],
        cwd=tmp_path,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "train.epochs" in result.stderr and "Traceback" not in result.stderr
    version = subprocess.run(
        [sys.executable, "-m", "mlpipe", "--version"],
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert version.stdout.strip() == "mlpipe 0.1.0"

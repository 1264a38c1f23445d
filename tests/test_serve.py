"""`mlpipe serve`: the real server process on a loopback port, called over HTTP, answers as
`mlpipe predict` does; bad requests get 400 or 413 with the reason; SIGTERM stops it with 0."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import stage_env, tiny_params
from mlpipe import dataset
from mlpipe.modeling import models
from mlpipe.schema import split_path, write_prepared
from mlpipe.serving import export
from mlpipe.util import files
from mlpipe.util.tables import read_table

pytestmark = pytest.mark.slow

MAX_BYTES = 20_000
INPUT_OUTPUT = ("--input", "new.csv", "--output", "out.csv")


def churn_frame(n=120, seed=0) -> pd.DataFrame:
    """Numbers with gaps, text categories, an id and a target of two labels."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    age[::17] = np.nan
    city = rng.choice(["paris", "lyon", "nice"], n)
    return pd.DataFrame(
        {
            "customer": [f"c{i:03d}" for i in range(n)],
            "age": age,
            "fee": rng.normal(30, 5, n).round(2),
            "city": city,
            "churn": np.where((age > 50) ^ (city == "nice"), "leave", "stay"),
        }
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """An untrained model on the churn columns, exported: what serving reads, made in seconds."""
    root = tmp_path_factory.mktemp("serve")
    params = tiny_params(data={"target": "churn", "id_column": "customer"})
    churn_frame().to_csv(root / "churn.csv", index=False)
    frame = read_table(root / "churn.csv", params.data.csv)
    splits, schema = dataset.prepare(frame, None, params.data, params.seed)
    write_prepared(root / "prepared", splits, schema)
    model = models.build_model(params.model, schema, splits["train"])
    with files.atomic_dir(root / "export") as folder:
        export.export_model(
            model, schema, params, split_path(root / "prepared", "train"), folder, splits["test"]
        )
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, folder: Path):
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "mlpipe",
            "serve",
            "--model",
            str(folder / "export"),
            "--port",
            str(self.port),
            "--name",
            "churn",
            "--max-request-bytes",
            str(MAX_BYTES),
        ]
        self.process = subprocess.Popen(
            command, env=stage_env(), stderr=subprocess.PIPE, text=True, cwd=folder
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.communicate()[1]
            try:
                if self.call("GET", "/ping")[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("the server did not answer /ping within 120 s")

    def call(self, method: str, path: str, body=None, raw: bytes | None = None):
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, method: str, path: str, body=None):
        status, content = self.call(method, path, body)
        return status, json.loads(content)


@pytest.fixture(scope="module")
def server(exported):
    running = Server(exported)
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()


def test_predictions_equal_mlpipe_predict_on_the_same_rows(server, exported):
    rows = churn_frame(n=30, seed=1).drop(columns="churn")
    rows.loc[3, "city"] = "berlin"  # never seen in training
    rows.loc[4, "age"] = None
    rows.to_csv(exported / "new.csv", index=False)
    result = subprocess.run(
        [sys.executable, "-m", "mlpipe", "predict", "--model", "export", *INPUT_OUTPUT],
        cwd=exported,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    expected = pd.read_csv(exported / "out.csv")
    assert list(expected.columns) == ["customer", "prediction", "proba_leave", "proba_stay"]
    records = json.loads(rows.to_json(orient="records"))

    # MLflow: the columns mlpipe predict writes, row by row, from records or a split frame
    status, got = server.json("POST", "/invocations", {"dataframe_records": records})
    assert status == 200
    mlflow = pd.DataFrame(got["predictions"])
    assert mlflow["customer"].tolist() == expected["customer"].tolist()
    assert mlflow["prediction"].tolist() == expected["prediction"].tolist()
    np.testing.assert_allclose(mlflow["proba_stay"], expected["proba_stay"], rtol=1e-6)
    split = json.loads(rows.to_json(orient="split", index=False))
    status, again = server.json("POST", "/invocations", {"dataframe_split": split})
    assert status == 200 and again == got

    # TF Serving, rows: the SavedModel's named outputs per row
    status, got = server.json("POST", "/v1/models/churn:predict", {"instances": records})
    assert status == 200
    predictions = got["predictions"]
    assert len(predictions) == 30
    assert predictions[0]["classes"] == ["leave", "stay"]
    assert [p["predicted_class"] for p in predictions] == expected["prediction"].tolist()
    scores = np.array([p["scores"] for p in predictions])
    np.testing.assert_allclose(scores[:, 1], expected["proba_stay"], rtol=1e-6)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-6)

    # TF Serving, columns, with values as lists of one, as the SavedModel's inputs are (n, 1)
    columns = {name: [[v] for v in rows[name].tolist()] for name in ("age", "fee", "city")}
    columns["age"] = [[None if np.isnan(v[0]) else v[0]] for v in columns["age"]]
    status, got = server.json("POST", "/v1/models/churn/versions/1:predict", {"inputs": columns})
    assert status == 200
    assert got["outputs"]["predicted_class"] == expected["prediction"].tolist()
    np.testing.assert_allclose(np.array(got["outputs"]["scores"]), scores, rtol=1e-6)


def test_bad_requests_name_the_column_and_the_reason(server):
    row = {"age": 40, "fee": 31.5, "city": "lyon"}
    status, got = server.json("POST", "/v1/models/churn:predict", {"instances": [{"age": 40}]})
    assert status == 400
    assert got == {
        "error": "request: missing columns ['fee', 'city']; the model needs 3 feature columns: "
        "age, fee, city"
    }
    bad = [row, {**row, "age": "forty"}]
    status, got = server.json("POST", "/invocations", {"dataframe_records": bad})
    assert status == 400
    assert "column `age` is numeric but row 2 holds 'forty'" in got["error"]
    status, got = server.json("POST", "/invocations", {"rows": [row]})
    assert status == 400 and "dataframe_records, dataframe_split" in got["error"]
    status, got = server.json("POST", "/v1/models/churn:predict", {"instances": [[40, 31.5]]})
    assert status == 400 and "row 1 is list, not an object" in got["error"]
    nested = {"instances": [row, {**row, "fee": [31.5, 32.0]}]}
    status, got = server.json("POST", "/v1/models/churn:predict", nested)
    assert status == 400
    assert got["error"].startswith("column `fee` of row 2: [31.5, 32.0] is not a single value")
    status, content = server.call("POST", "/invocations", raw=b"{not json")
    assert status == 400 and "not JSON" in json.loads(content)["error"]
    status, got = server.json("POST", "/v1/models/other:predict", {"instances": [row]})
    assert status == 404 and got == {"error": "Servable not found for request: Latest(other)"}
    # Over the bounded size: 413, whatever the body holds
    big = {"instances": [row] * (MAX_BYTES // len(json.dumps(row)) + 10)}
    status, got = server.json("POST", "/v1/models/churn:predict", big)
    assert status == 413
    assert got["error"].startswith("the request body is over 20,000 bytes")
    # The server is still up and answers
    status, _ = server.json("POST", "/v1/models/churn:predict", {"instances": [row]})
    assert status == 200


def test_health_status_and_metadata(server):
    assert server.call("GET", "/ping")[0] == 200
    assert server.call("GET", "/health")[0] == 200
    status, content = server.call("GET", "/version")
    assert status == 200 and content.decode() == "0.1.0"
    status, got = server.json("GET", "/v1/models/churn")
    assert status == 200
    assert got["model_version_status"][0]["version"] == "1"
    assert got["model_version_status"][0]["state"] == "AVAILABLE"
    status, got = server.json("GET", "/v1/models/churn/metadata")
    assert status == 200
    signature = got["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sorted(signature["inputs"]) == ["age", "city", "fee"]
    assert signature["inputs"]["city"]["dtype"] == "DT_STRING"
    assert sorted(signature["outputs"]) == ["classes", "predicted_class", "scores"]
    assert got["mlpipe"]["classes"] == ["leave", "stay"]


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(exported):
    server = Server(exported)
    body = json.dumps({"instances": [{"age": 40, "fee": 31.5, "city": "lyon"}]}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        head = (
            f"POST /v1/models/churn:predict HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[:10])  # the request has begun, not ended
        time.sleep(1)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert server.process.poll() is None  # still waiting for the request to end
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, content = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200")
    assert json.loads(content)["predictions"][0]["classes"] == ["leave", "stay"]
    _, stderr = server.process.communicate(timeout=60)
    assert server.process.returncode == 0, stderr
    assert "Finished server process" in stderr


def test_named_outputs_of_regression_and_of_one_sigmoid_unit():
    from mlpipe.serving import serve

    got = serve.named_outputs(np.array([[1.5], [2.25]], dtype=np.float32), None)
    assert list(got) == ["predictions"] and got["predictions"].tolist() == [1.5, 2.25]
    got = serve.named_outputs(np.array([[0.25], [0.75]], dtype=np.float32), (False, True))
    assert got["scores"].tolist() == [[0.75, 0.25], [0.25, 0.75]]
    assert got["classes"].tolist() == [["False", "True"], ["False", "True"]]
    assert got["predicted_class"].tolist() == ["False", "True"]

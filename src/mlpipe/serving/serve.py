"""`mlpipe serve`: an exported model behind HTTP, speaking TF Serving's REST API and MLflow's
scoring protocol.

The model is loaded once, at start. Every request's rows go through `predict.Predictor`, the
code `mlpipe predict` runs, as one model call: the same checks, typing and numbers. Routes:

- `POST /v1/models/<name>:predict` (and `/v1/models/<name>/versions/1:predict`), TF Serving's:
  `{"instances": [{column: value, ...}, ...]}` answers `{"predictions": [...]}`, one per row;
  `{"inputs": {column: [values], ...}}` answers `{"outputs": ...}`. The outputs are the
  SavedModel's: `scores`, `classes` and `predicted_class`, or `predictions` for regression.
- `GET /v1/models/<name>` (the version's state) and `GET /v1/models/<name>/metadata`.
- `POST /invocations`, MLflow's: `dataframe_records` or `dataframe_split` (also `instances` and
  `inputs`) answers `{"predictions": [...]}`, one object per row with the columns `mlpipe
  predict` writes (`prediction`, `proba_<class>`, the id column when given).
- `GET /ping`, `GET /health` (200 once the model is loaded) and `GET /version`.

A bad request answers 400 with `{"error": ...}` naming the missing or bad column, as TF Serving
does; a body over `max_request_bytes` answers 413. SIGTERM or SIGINT stops the server after the
requests in flight are answered, and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from mlpipe import MlpipeError, __version__
from mlpipe.evaluation.metrics import class_probabilities
from mlpipe.serving.metadata import (
    CLASSES,
    PREDICTED_CLASS,
    PREDICTIONS,
    SCORES,
    ExportMetadata,
)
from mlpipe.serving.predict import Predictor, csv_params
from mlpipe.util.paths import SAVED_MODEL_VERSION
from mlpipe.util.tables import clean_cells

log = logging.getLogger("mlpipe.serve")

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
# How long in-flight requests may take to finish after SIGTERM or SIGINT
GRACEFUL_SECONDS = 30
WHERE = "request"


class RequestError(MlpipeError):
    """A request the server cannot answer as asked: answered with `status` and the message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class JSON(JSONResponse):
    """orjson: several times faster than the standard library on large arrays."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error(message: str, status: int = 400) -> JSON:
    return JSON({"error": message}, status_code=status)


def create_app(predictor: Predictor, name: str, max_request_bytes: int) -> FastAPI:
    """The HTTP application around a loaded model."""
    app = FastAPI(title=f"mlpipe: {name}", version=__version__, docs_url=None, redoc_url=None)
    schema = predictor.schema
    version = str(SAVED_MODEL_VERSION)

    async def body(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
            raise RequestError(too_large(max_request_bytes), 413)
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > max_request_bytes:
                raise RequestError(too_large(max_request_bytes), 413)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise RequestError(f"the request body is not JSON: {err}") from None

    def check_name(requested: str) -> None:
        if requested != name:
            raise RequestError(f"Servable not found for request: Latest({requested})", 404)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError) -> JSON:
        return error(str(err), err.status)

    @app.exception_handler(MlpipeError)
    async def data_error(request: Request, err: MlpipeError) -> JSON:
        return error(str(err))

    @app.post("/v1/models/{model}:predict")
    @app.post("/v1/models/{model}/versions/{number}:predict")
    async def tf_predict(request: Request, model: str, number: str = version) -> JSON:
        check_name(model)
        if number != version:
            raise RequestError(f"Servable not found for request: Specific({model}, {number})", 404)
        payload = await body(request)
        frame, rows = tf_frame(payload)
        raw = await run_in_threadpool(predictor.raw, checked(predictor, frame), WHERE)
        outputs = named_outputs(raw, schema.classes if schema.task != "regression" else None)
        if rows:
            if len(outputs) == 1:
                return JSON({"predictions": outputs[PREDICTIONS]})
            keys = list(outputs)
            columns = [outputs[k].tolist() for k in keys]
            return JSON(
                {
                    "predictions": [
                        dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)
                    ]
                }
            )
        if len(outputs) == 1:
            return JSON({"outputs": outputs[PREDICTIONS]})
        # orjson writes numeric arrays itself, not arrays of text
        return JSON(
            {"outputs": {k: v.tolist() if v.dtype == object else v for k, v in outputs.items()}}
        )

    @app.get("/v1/models/{model}")
    async def tf_status(model: str) -> JSON:
        check_name(model)
        state = {"error_code": "OK", "error_message": ""}
        return JSON(
            {"model_version_status": [{"version": version, "state": "AVAILABLE", "status": state}]}
        )

    @app.get("/v1/models/{model}/metadata")
    async def tf_metadata(model: str) -> JSON:
        check_name(model)
        return JSON(
            {
                "model_spec": {"name": name, "signature_name": "", "version": version},
                "metadata": {"signature_def": signature_def(predictor)},
                "mlpipe": schema.model_dump(mode="json"),
            }
        )

    @app.post("/invocations")
    async def invocations(request: Request) -> JSON:
        frame = mlflow_frame(await body(request))
        out = await run_in_threadpool(predictor.frame, checked(predictor, frame), WHERE)
        return JSON({"predictions": out.to_dict(orient="records")})

    @app.get("/ping")
    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/version")
    async def mlpipe_version() -> Response:
        return Response(__version__, media_type="text/plain")

    return app


def too_large(limit: int) -> str:
    return (
        f"the request body is over {limit:,} bytes; send fewer rows per request, or start the "
        "server with a larger --max-request-bytes"
    )


def checked(predictor: Predictor, frame: pd.DataFrame) -> pd.DataFrame:
    """The request's rows as `tables` reads a file's cells: text trimmed, missing-value markers
    missing; a missing feature column fails naming it."""
    if frame.empty:
        raise RequestError("the request holds no rows")
    predictor.check([str(c) for c in frame.columns], WHERE)
    text = [
        name
        for name, dtype in frame.dtypes.items()
        if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)
    ]
    if text:  # JSON numbers are numbers already
        frame = frame.copy()
        frame[text] = clean_cells(frame[text], csv_params(predictor.schema).na_values)
    return frame


def unwrap(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells that are lists of one value become that value, as TF Serving writes inputs of
    shape (1,); a longer list or an object is refused, naming the column and the row. Only
    columns of Python objects can hold them, so numeric columns cost nothing."""
    for name, dtype in frame.dtypes.items():
        if not pd.api.types.is_object_dtype(dtype):
            continue
        column = frame[name]
        nested = column.map(lambda v: isinstance(v, list | dict)).to_numpy(dtype=bool)
        if not nested.any():
            continue
        values = column.to_numpy(copy=True)
        for i in np.flatnonzero(nested):
            value = values[i]
            if not isinstance(value, list) or len(value) != 1 or isinstance(value[0], list | dict):
                raise RequestError(
                    f"column `{name}` of row {i + 1}: {value!r} is not a single value; each "
                    "column takes one value per row (or a list of one)"
                )
            values[i] = value[0]
        frame[name] = pd.Series(values, index=frame.index, name=name).infer_objects()
    return frame


def records_frame(records: Any, key: str) -> pd.DataFrame:
    """Row objects ({column: value}) as a frame."""
    if not isinstance(records, list):
        raise RequestError(f"`{key}` must be a list of row objects {{column: value, ...}}")
    for i, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise RequestError(
                f"`{key}` row {i} is {type(record).__name__}, not an object "
                "{column: value, ...}; rows name their columns"
            )
    return unwrap(pd.DataFrame.from_records(records))


def columns_frame(columns: Any, key: str) -> pd.DataFrame:
    """Columnar inputs ({column: [values]}) as a frame."""
    if not isinstance(columns, dict):
        raise RequestError(f"`{key}` must be an object {{column: [values], ...}}")
    data = {str(c): v if isinstance(v, list) else [v] for c, v in columns.items()}
    lengths = {column: len(values) for column, values in data.items()}
    if len(set(lengths.values())) > 1:
        raise RequestError(f"`{key}`: the columns have different lengths {lengths}")
    return unwrap(pd.DataFrame(data))


def tf_frame(payload: Any) -> tuple[pd.DataFrame, bool]:
    """TF Serving's request: the frame, and whether it came as rows (instances)."""
    if isinstance(payload, dict) and "instances" in payload:
        return records_frame(payload["instances"], "instances"), True
    if isinstance(payload, dict) and "inputs" in payload:
        return columns_frame(payload["inputs"], "inputs"), False
    raise RequestError('the request needs "instances" (a list of rows) or "inputs" (columns)')


def mlflow_frame(payload: Any) -> pd.DataFrame:
    """MLflow's scoring request as a frame."""
    if not isinstance(payload, dict):
        raise RequestError("the request body must be a JSON object")
    if "dataframe_records" in payload:
        return records_frame(payload["dataframe_records"], "dataframe_records")
    if "dataframe_split" in payload:
        split = payload["dataframe_split"]
        if not isinstance(split, dict) or not isinstance(split.get("columns"), list):
            raise RequestError('`dataframe_split` must be {"columns": [...], "data": [[...]]}')
        columns = [str(c) for c in split["columns"]]
        data = split.get("data")
        if not isinstance(data, list):
            raise RequestError("`dataframe_split.data` must be a list of rows")
        for i, row in enumerate(data, start=1):
            if not isinstance(row, list) or len(row) != len(columns):
                raise RequestError(
                    f"`dataframe_split.data` row {i} does not hold {len(columns)} values, one "
                    f"per column of `columns`"
                )
        return unwrap(pd.DataFrame(data, columns=columns))
    if "instances" in payload or "inputs" in payload:
        return tf_frame(payload)[0]
    raise RequestError(
        "the request needs one of dataframe_records, dataframe_split, instances or inputs"
    )


def named_outputs(raw: np.ndarray, classes: tuple | None) -> dict[str, np.ndarray]:
    """The SavedModel signature's outputs, computed from the model's main output."""
    if classes is None:
        return {PREDICTIONS: np.asarray(raw, dtype=np.float32).reshape(-1)}
    scores = class_probabilities(raw, len(classes)).astype(np.float32)
    names = np.array([str(c) for c in classes], dtype=object)
    return {
        SCORES: scores,
        CLASSES: np.tile(names, (len(scores), 1)),
        PREDICTED_CLASS: names[scores.argmax(axis=1)],
    }


def signature_def(predictor: Predictor) -> dict:
    """The serving signature as TF Serving's metadata route describes it, in short."""
    schema = predictor.schema
    inputs = {
        f.input: {"dtype": "DT_FLOAT" if f.kind == "numeric" else "DT_STRING", "shape": [-1, 1]}
        for f in schema.features
    }
    if schema.task == "regression":
        outputs = {PREDICTIONS: {"dtype": "DT_FLOAT", "shape": [-1]}}
    else:
        k = len(schema.classes or ())
        outputs = {
            SCORES: {"dtype": "DT_FLOAT", "shape": [-1, k]},
            CLASSES: {"dtype": "DT_STRING", "shape": [-1, k]},
            PREDICTED_CLASS: {"dtype": "DT_STRING", "shape": [-1]},
        }
    serve = {"inputs": inputs, "outputs": outputs, "method_name": "tensorflow/serving/predict"}
    return {"signature_def": {"serving_default": serve, "serve": serve}}


def serve(
    model_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8501,
    name: str = "model",
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> None:
    """Load the model, then answer requests until SIGTERM or SIGINT."""
    import uvicorn

    from mlpipe.serving.predict import load

    model, schema = load(model_path)
    if not isinstance(schema, ExportMetadata):
        log.info("no metadata.json beside %s: features taken from the model's inputs", model_path)
    predictor = Predictor(model, schema)
    # One row of missing values, so that the first request does not wait for the tracing
    warm_up = {f.name: [np.nan] if f.kind == "numeric" else [""] for f in schema.features}
    predictor.raw(pd.DataFrame(warm_up), WHERE)
    app = create_app(predictor, name, max_request_bytes)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )
    server = uvicorn.Server(config)
    # uvicorn stops gracefully on these signals, then raises them again once its handlers are
    # gone; with these in place, a requested stop ends the process with 0, not as killed.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run()
    log.info("stopped")

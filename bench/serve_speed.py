"""`mlpipe serve` throughput and latency: requests/s and p50/p95/p99 for single-row requests
and for 1,000-row batches, from a sequential client and from a few concurrent ones, over
loopback with keep-alive connections. The model: the default (300, 100) MLP on the digits' 64
numeric columns, briefly trained.

    python bench/serve_speed.py [--requests 500] [--batches 50] [--clients 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from export_fixture import export_digits_model, rows

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(export: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "mlpipe", "serve", "--model", str(export)]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--max-request-bytes", str(64 << 20)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not start within 180 s")


def run_client(port: int, path: str, bodies: list[bytes]) -> list[float]:
    """Send `bodies` one after the other on one connection; the latency of each, in seconds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json"}
    latencies = []
    for body in bodies:
        start = time.perf_counter()
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - start)
        if response.status != 200:
            raise SystemExit(f"{path}: HTTP {response.status}")
    return latencies


def measure(port: int, label: str, path: str, bodies: list[bytes], clients: int) -> None:
    run_client(port, path, bodies[:5])  # warm the connection and the server
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        shares = [bodies[i::clients] for i in range(clients)]
        latencies = [
            t for part in pool.map(lambda b: run_client(port, path, b), shares) for t in part
        ]
    elapsed = time.perf_counter() - start
    p50, p95, p99 = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    print(
        f"| {label} | {clients} | {len(bodies) / elapsed:,.0f} | {p50:.1f} | {p95:.1f} | "
        f"{p99:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="single-row requests")
    parser.add_argument("--batches", type=int, default=50, help="1,000-row requests")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mlpipe-serve-bench-"))
    export, names = export_digits_model(folder)
    frame = rows(names, 1000 * args.batches + args.requests, seed=1).drop(columns="id")
    records = json.loads(frame.to_json(orient="records"))
    single = [json.dumps({"instances": [r]}).encode() for r in records[: args.requests]]
    batches = [
        json.dumps({"instances": records[i : i + 1000]}).encode()
        for i in range(args.requests, args.requests + 1000 * args.batches, 1000)
    ]
    split = [
        json.dumps(
            {"dataframe_split": {"columns": names, "data": frame.values[i : i + 1000].tolist()}}
        ).encode()
        for i in range(args.requests, args.requests + 1000 * args.batches, 1000)
    ]
    port = free_port()
    process = start(export, port)
    try:
        print(f"{os.cpu_count()} CPUs; the server and the clients share them")
        print("| request | clients | requests/s | p50 ms | p95 ms | p99 ms |")
        print("|---|---|---|---|---|---|")
        predict = "/v1/models/model:predict"
        for clients in (1, args.clients):
            measure(port, "1 row, TF Serving `instances`", predict, single, clients)
        for clients in (1, args.clients):
            measure(port, "1,000 rows, TF Serving `instances`", predict, batches, clients)
        measure(port, "1,000 rows, MLflow `dataframe_split`", "/invocations", split, 1)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        print(f"server stopped by SIGTERM, exit code {code}")


if __name__ == "__main__":
    main()

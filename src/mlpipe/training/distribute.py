"""Data-parallel training on tf.distribute: the strategy `train.distribute` asks for, which
worker this process is, and, for `local_workers`, the other workers started on this machine.

Every worker trains the same replicas in step; the chief (TF_CONFIG's `chief`, else worker 0)
alone writes the stage's outputs, DVCLive and TensorBoard. See README "Distributed training".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import tensorflow as tf

from mlpipe import MlpipeError
from mlpipe.params import DistributeParams
from mlpipe.training import keras_patch

log = logging.getLogger("mlpipe.train")

# Set in the workers that `local_workers` starts: the process id of the chief that started them.
LOCAL_CHIEF_ENV = "MLPIPE_LOCAL_CHIEF"
POLL_SECONDS = 0.2
GRACE_SECONDS = 5.0


class DistributeError(MlpipeError):
    """train.distribute cannot be set up as written."""


@dataclass
class LocalWorkers:
    """Workers 1..N-1 that the chief started on this machine. A watchdog thread ends the whole
    run when one of them fails: its peers would wait for it forever."""

    processes: list[subprocess.Popen] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> None:
        threading.Thread(target=self._watch, name="local-workers", daemon=True).start()

    def _watch(self) -> None:
        while not self.done.wait(POLL_SECONDS):
            for index, process in enumerate(self.processes, start=1):
                code = process.poll()
                if code not in (None, 0):
                    # A failure every worker meets (a diverged loss) is this process's to
                    # report, once its own error reaches the stage; a lone dead worker is not.
                    time.sleep(GRACE_SECONDS)
                    self.stop()
                    print(
                        f"error: local worker {index} (pid {process.pid}) exited with code "
                        f"{code} while training; every worker stopped, no output of this stage "
                        "was replaced. Rerun to resume from the last epoch all workers backed up",
                        file=sys.stderr,
                        flush=True,
                    )
                    os._exit(2)  # the main thread may be blocked in an all-reduce

    def wait(self) -> None:
        """Wait for every worker to finish; raise if one failed."""
        self.done.set()
        for index, process in enumerate(self.processes, start=1):
            code = process.wait()
            if code != 0:
                self.stop()
                raise DistributeError(
                    f"local worker {index} (pid {process.pid}) exited with code {code}; see its "
                    "log lines above. No output of this stage was replaced"
                )

    def stop(self) -> None:
        self.done.set()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()


@dataclass
class Cluster:
    """The strategy of this run (None: plain Keras, as without train.distribute) and this
    process's place in it."""

    strategy: tf.distribute.Strategy | None = None
    kind: str = "none"
    task: str = "chief"  # `chief`, or `worker-<i>` for every other worker
    workers: int = 1
    local: LocalWorkers | None = None

    @property
    def chief(self) -> bool:
        return self.task == "chief"

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.strategy else 1

    def scope(self) -> contextlib.AbstractContextManager:
        """Where the model's variables must be made (loading it) and compiled."""
        return self.strategy.scope() if self.strategy else contextlib.nullcontext()

    def shardable(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """`dataset` set to be split by element across the workers when Keras distributes it:
        each global batch is cut between the replicas, so every row is seen once per epoch.
        (Sharding by file would hand each worker the whole of an in-memory table.)"""
        if self.strategy is None:
            return dataset
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return dataset.with_options(options)

    def agree(self, value: int) -> bool:
        """Whether every worker holds the same `value` (the epoch it would resume from)."""
        if self.workers == 1 or self.strategy is None:
            return True
        strategy = self.strategy

        @tf.function
        def everyone() -> tf.Tensor:
            return strategy.gather(strategy.run(lambda: tf.constant([value], tf.int64)), axis=0)

        values = everyone().numpy()
        return bool(values.min() == values.max())

    def finish(self) -> None:
        """Wait for the workers this process started, if any."""
        if self.local is not None:
            self.local.wait()

    def describe(self) -> str:
        return (
            f"strategy {self.kind}: {self.workers} worker(s), {self.replicas} replica(s) in "
            f"sync; this process is the {self.task}"
        )


def setup(cfg: DistributeParams, argv: Sequence[str] | None = None) -> Cluster:
    """The Cluster for `cfg`. Call before anything else touches TensorFlow: logical CPU devices
    can only be set up before it starts.

    For multi_worker with `local_workers` N, the chief starts N-1 copies of this process
    (`argv`, by default sys.argv) with their TF_CONFIG first.
    """
    if cfg.strategy == "none":
        return Cluster()
    if cfg.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy(_mirrored_devices(cfg.cpu_devices))
        cluster = Cluster(strategy, "mirrored")
    else:
        keras_patch.check()
        if "TF_CONFIG" not in os.environ and not cfg.local_workers:
            raise DistributeError(
                "train.distribute.strategy multi_worker: no TF_CONFIG in the environment; set "
                "train.distribute.local_workers to 2 or more to start workers on this machine, "
                "or launch the stage on each worker with its TF_CONFIG (README: Distributed "
                "training)"
            )
        local = _start_local_workers(cfg.local_workers, argv or sys.argv)
        keras_patch.apply()
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            resolver = strategy.cluster_resolver
            spec = resolver.cluster_spec().as_dict()
        except BaseException:
            if local is not None:
                local.stop()
            raise
        chief = resolver.task_type == "chief" or (
            "chief" not in spec and resolver.task_type == "worker" and resolver.task_id == 0
        )
        task = "chief" if chief else f"{resolver.task_type}-{resolver.task_id}"
        workers = sum(len(spec.get(kind, ())) for kind in ("chief", "worker"))
        cluster = Cluster(strategy, "multi_worker", task, workers, local)
    log.info("%s", cluster.describe())
    if not cluster.chief:
        log.setLevel(logging.WARNING)  # the chief logs the run; the others only what goes wrong
    return cluster


def _mirrored_devices(cpu_devices: int) -> list[str] | None:
    """The GPUs (None: MirroredStrategy's choice), or `cpu_devices` logical CPUs without any."""
    if tf.config.list_physical_devices("GPU"):
        if cpu_devices:
            log.info("GPUs found: mirrored over them, not over %d CPU devices", cpu_devices)
        return None
    if not cpu_devices:
        raise DistributeError(
            "train.distribute.strategy mirrored: this machine has no GPU that TensorFlow can "
            "use; set train.distribute.cpu_devices to 2 or more to mirror over logical CPU "
            "devices, or strategy to none"
        )
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices
        )
    except RuntimeError as err:  # TensorFlow already started in this process
        raise DistributeError(f"train.distribute.cpu_devices: {err}") from None
    return [f"/cpu:{i}" for i in range(cpu_devices)]


def _start_local_workers(count: int, argv: Sequence[str]) -> LocalWorkers | None:
    """Start workers 1..count-1 running `argv`, and make this process worker 0 of their
    TF_CONFIG; in a worker started so, watch that its chief lives."""
    if os.environ.get(LOCAL_CHIEF_ENV):
        _exit_with(int(os.environ[LOCAL_CHIEF_ENV]))
        return None
    if count == 0:
        return None
    if "TF_CONFIG" in os.environ:
        raise DistributeError(
            f"train.distribute.local_workers is {count}, but TF_CONFIG is set: the launcher "
            "describes the cluster. Set local_workers to 0 to join it, or unset TF_CONFIG"
        )
    addresses = [f"localhost:{port}" for port in _free_ports(count)]

    def tf_config(index: int) -> str:
        return json.dumps(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        )

    local = LocalWorkers()
    for index in range(1, count):
        env = {**os.environ, "TF_CONFIG": tf_config(index), LOCAL_CHIEF_ENV: str(os.getpid())}
        local.processes.append(subprocess.Popen([sys.executable, *argv], env=env))
        log.info(
            "started local worker %d, pid %d, on %s",
            index,
            local.processes[-1].pid,
            addresses[index],
        )
    os.environ["TF_CONFIG"] = tf_config(0)
    local.watch()
    return local


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _exit_with(chief_pid: int) -> None:
    """End this worker when the chief that started it is gone (killed, or failed)."""

    def watch() -> None:
        while True:
            time.sleep(POLL_SECONDS)
            if os.getppid() != chief_pid:
                os._exit(3)

    threading.Thread(target=watch, name="chief-watch", daemon=True).start()


# What a collective op raises when a peer is gone.
PEER_LOST = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.DeadlineExceededError,
)


@contextlib.contextmanager
def stopping_workers_on_error(cluster: Cluster) -> Iterator[None]:
    """Stop the local workers if this process fails, as they cannot go on without it; a peer
    lost mid-training is a DistributeError that says how to resume."""
    try:
        yield
    except BaseException as err:
        if cluster.local is not None:
            cluster.local.stop()
        if cluster.workers > 1 and isinstance(err, PEER_LOST):
            reason = str(err.message).splitlines()[0] if err.message else type(err).__name__
            raise DistributeError(
                f"{cluster.task}: another worker stopped while training ({reason}); every worker "
                "must be restarted. Rerun to resume from the last epoch all workers backed up"
            ) from None
        raise

"""One worker of a two-worker MultiWorkerMirroredStrategy on loopback, for test_distribute.py.

Usage: distribute_probe.py INDEX PORT0,PORT1 OUT.json. Records which rows of the training
batches this worker's replica receives, step by step, and whether Keras's `fit` fails unpatched
and trains patched (mlpipe.training.keras_patch).
"""

import json
import os
import sys

INDEX, PORTS, OUT = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
os.environ["TF_CONFIG"] = json.dumps(
    {
        "cluster": {"worker": [f"localhost:{port}" for port in PORTS]},
        "task": {"type": "worker", "index": INDEX},
    }
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mlpipe.training import keras_patch  # noqa: E402
from mlpipe.training.batches import ShuffledBatches  # noqa: E402
from mlpipe.training.distribute import Cluster  # noqa: E402

ROWS, BATCH, EPOCHS, SEED = 103, 8, 2, 5  # 13 batches an epoch, the last of 7 rows

tf.config.threading.set_intra_op_parallelism_threads(1)
strategy = tf.distribute.MultiWorkerMirroredStrategy()
cluster = Cluster(strategy, "multi_worker", "chief" if INDEX == 0 else "worker-1", 2)
record: dict = {"replicas": strategy.num_replicas_in_sync, "setup": [ROWS, BATCH, EPOCHS, SEED]}

# The rows each step hands this worker, as Keras's fit distributes the training batches.
rows = np.arange(ROWS, dtype=np.float32)[:, None]
batches = ShuffledBatches((rows, rows[:, 0]), BATCH, SEED, 0, EPOCHS, 1)
distributed = strategy.experimental_distribute_dataset(cluster.shardable(batches.dataset))
steps = iter(distributed)
record["rows"] = [
    [
        np.concatenate(
            [x.numpy()[:, 0] for x in strategy.experimental_local_results(next(steps)[0])]
        ).tolist()
        for _ in range(batches.steps_per_epoch or 0)
    ]
    for _ in range(EPOCHS)
]


def fit_once() -> list:
    keras.utils.set_random_seed(SEED)
    x = np.random.default_rng(0).random((64, 4)).astype("float32")
    y = (x.sum(axis=1) > 2).astype("int32")
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy", steps_per_execution=1)
    data = cluster.shardable(tf.data.Dataset.from_tensor_slices((x, y)).batch(16))
    history = model.fit(data, epochs=2, verbose=0)
    return history.history["loss"]


try:
    fit_once()
    record["unpatched"] = "trained"
except ValueError as err:
    record["unpatched"] = str(err)[:200]
keras_patch.apply()
record["patched_loss"] = fit_once()

with open(OUT, "w") as handle:
    json.dump(record, handle)

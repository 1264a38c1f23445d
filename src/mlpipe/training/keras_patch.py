"""The two fixes Keras's TensorFlow trainer needs to `fit` under MultiWorkerMirroredStrategy.

Out of the box, Keras 3 fails there before the first step (keras-team/keras#20585, "Attempt to
convert a value (PerReplica...)"): to build the model from the first batch, it reduces the
per-replica batch with `strategy.reduce(..., axis=None)`, which a multi-worker strategy cannot
do for a value that lives on one worker's replicas. Behind that, `reduce_per_replica` reduces
every log value along axis 0 under a multi-worker strategy, which fails for the scalar loss
and metrics.

Both functions are private, so the patch applies only to the Keras versions it was tested on;
`check()` refuses others with a clear error rather than patching blind, and
tests/test_distribute.py fails when the patched functions change shape or the bug is fixed
upstream.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer

from mlpipe import MlpipeError

# Versions on which two workers on loopback, patched, end with the weights MirroredStrategy
# reaches on two replicas (tests/test_distribute.py).
TESTED_VERSIONS = ("3.15.1",)


class UnsupportedKeras(MlpipeError):
    """The installed Keras is not one the multi-worker patch was tested on."""


def check() -> None:
    """Raise UnsupportedKeras unless the installed Keras is one of TESTED_VERSIONS."""
    if keras.__version__ not in TESTED_VERSIONS:
        raise UnsupportedKeras(
            f"train.distribute.strategy multi_worker needs a fix of Keras's private trainer "
            f"functions that was tested with Keras {', '.join(TESTED_VERSIONS)} only; this is "
            f"Keras {keras.__version__}. Install keras=={TESTED_VERSIONS[-1]} (requirements.txt), "
            "or use strategy mirrored or none"
        )


def multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` spans several workers (Keras's own test, which the bugs follow)."""
    return bool(trainer._collective_all_reduce_multi_worker(strategy))


_original_reduce = trainer.reduce_per_replica
_original_build = trainer.TensorFlowTrainer._maybe_symbolic_build


@functools.wraps(_original_reduce)
def reduce_per_replica(values, strategy, reduction):
    """Scalars are averaged over the replicas (axis None) instead of along an axis they lack."""
    if reduction in ("auto", "mean") and multi_worker(strategy):
        return tree.map_structure(
            lambda v: strategy.reduce("MEAN", v, axis=0 if v.shape.rank else None), values
        )
    return _original_reduce(values, strategy, reduction)


@functools.wraps(_original_build)
def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Build from the first replica's share of the first batch: only its shapes and types
    matter, and they are the same on every replica."""
    strategy = self._distribute_strategy
    if strategy is None or iterator is None or not multi_worker(strategy):
        return _original_build(self, iterator=iterator, data_batch=data_batch)
    for _, _, batches in iterator:
        data_batch = tree.map_structure(
            lambda v: (
                strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues)
                else v
            ),
            next(batches),
        )
        break
    return _original_build(self, data_batch=data_batch)


def apply() -> None:
    """Patch the installed Keras (idempotent); check() first."""
    check()
    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build

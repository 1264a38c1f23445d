"""TensorFlow set-up shared by the stages that train or run a model."""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

log = logging.getLogger("mlpipe.runtime")

# Batches up to this many rows train faster with one thread per op; larger ones gain from
# splitting each op across the cores. The README gives the measured gain per batch size.
SMALL_BATCH = 512


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def op_threads(setting: str | int, batch_size: int) -> int:
    """Threads per op for `train.op_threads` (0: TensorFlow's default, all cores).

    The matrix products of a small batch are too small to gain from being split across cores;
    with one thread each, the cores run independent ops side by side instead (TensorFlow's
    inter-op parallelism stays on).
    """
    if setting != "auto":
        return int(setting)
    return 1 if batch_size <= SMALL_BATCH else 0


def set_op_threads(threads: int) -> None:
    """Apply op_threads(). TensorFlow fixes its thread pools when it runs its first op, so call
    this before anything else touches TensorFlow."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    log.info("TensorFlow ops use %s", f"{threads} thread(s) each" if threads else "all cores")

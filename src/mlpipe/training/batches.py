"""The training data as `fit` reads it: batches shuffled by (seed, epoch) alone, so that a
resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

# Rows of training data gathered at once when shuffling (see epoch_batches).
BLOCK_BYTES = 16 * 2**20


def steps(n_rows: int, batch_size: int) -> int:
    """Batches in one epoch: the last one may be short."""
    return max(math.ceil(n_rows / batch_size), 1)


def n_rows(x) -> int:
    """Rows of a feature matrix, or of a dict of them."""
    return int(tf.nest.flatten(x)[0].shape[0])


class EpochBatches(keras.callbacks.Callback):
    """Training batches shuffled by the epoch number, which this callback hands to the
    dataset (`self.epoch`) as each epoch begins; `fit(model)` trains on them."""

    dataset: tf.data.Dataset
    steps_per_epoch: int | None

    def __init__(self, first_epoch: int, epochs: int):
        super().__init__()
        self.epochs = epochs
        # Read by the dataset each time Keras starts a pass over it (after on_epoch_begin).
        self.epoch = tf.Variable(first_epoch, dtype=tf.int64, trainable=False)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch)

    def fit(self, model: keras.Model, callbacks=(), **fit_args) -> keras.callbacks.History:
        """`model.fit` on these batches, quietly, with this callback before `callbacks`."""
        return model.fit(
            self.dataset,
            epochs=self.epochs,
            steps_per_epoch=self.steps_per_epoch,
            shuffle=False,  # shuffled here, by epoch number
            callbacks=[self, *callbacks],
            verbose=0,
            **fit_args,
        )


class ShuffledBatches(EpochBatches):
    """The training data as `fit` reads it, for epochs first_epoch..epochs-1: `fit(model)`
    trains on it (or pass `dataset` and `steps_per_epoch` to Keras's `fit`, and this callback
    to the same `fit`).

    `arrays` is (x, y) or (x, y, sample_weight), where x and y may be dicts of arrays (a model
    with several inputs or outputs); every array is cut by the same rows.

    Keras's own shuffling draws from one random stream, so a run resumed at epoch k would see
    other batches than an uninterrupted one. Seeding each epoch's shuffle by its number makes
    the batches of epoch k the same however the run got there.

    Keras runs `steps_per_execution` batches per call whatever `steps_per_epoch` says. When
    that divides an epoch's batches, `dataset` is one stream of all epochs. Otherwise a stream
    would let an epoch's last call take the next epoch's first batches, so `dataset` is one
    epoch, which Keras passes over anew each epoch (`steps_per_epoch` None), and the callback
    tells it which epoch to shuffle for; a new pass costs about 40 ms.
    """

    def __init__(
        self,
        arrays: tuple,
        batch_size: int,
        seed: int,
        first_epoch: int,
        epochs: int,
        steps_per_execution: int,
    ):
        super().__init__(first_epoch, epochs)
        batches = steps(n_rows(arrays), batch_size)
        if batches % steps_per_execution == 0:
            numbers = tf.data.Dataset.range(first_epoch, epochs)
            self.steps_per_epoch = batches
        else:
            numbers = tf.data.Dataset.range(1).map(lambda _: self.epoch.read_value())
            self.steps_per_epoch = None
        self.dataset = epoch_batches(arrays, batch_size, seed, numbers)
        if self.steps_per_epoch is None:
            # The batch count is known, so Keras knows each epoch's steps without being told.
            self.dataset = self.dataset.apply(tf.data.experimental.assert_cardinality(batches))


def epoch_batches(
    arrays: tuple, batch_size: int, seed: int, epochs: tf.data.Dataset
) -> tf.data.Dataset:
    """The batches of `arrays` for each epoch number in `epochs`, in the order that (seed,
    epoch) alone decides."""
    # tf.data would embed a captured tensor in its graph: another copy of the table. A variable
    # is captured by reference (features.transform already returns one).
    columns = tuple(
        a if isinstance(a, tf.Variable) else tf.Variable(a, trainable=False)
        for a in tf.nest.flatten(arrays)
    )
    rows_total = n_rows(arrays)
    row_bytes = sum(4 * max(1, int(np.prod(c.shape[1:]))) for c in columns)
    block = max(1, BLOCK_BYTES // (row_bytes * batch_size)) * batch_size
    nested = any(tf.nest.is_nested(a) for a in arrays)

    def batches_of(rows):
        # One gather per block of rows, then the block is cut into ready batches: far cheaper
        # per batch than a gather each, and memory stays at one block.
        block_columns = tuple(tf.gather(c, rows) for c in columns)
        n = tf.shape(rows)[0]
        full = n // batch_size * batch_size
        heads = tuple(
            tf.reshape(c[:full], tf.concat([[-1, batch_size], tf.shape(c)[1:]], 0))
            for c in block_columns
        )
        tail = tf.data.Dataset.from_tensors(tuple(c[full:] for c in block_columns))
        batches = tf.data.Dataset.from_tensor_slices(heads).concatenate(
            tail.filter(lambda *c: tf.shape(c[0])[0] > 0)
        )
        if not nested:
            return batches
        # Dicts of inputs or labels were cut as flat columns: give each batch their shape back.
        return batches.map(lambda *c: tf.nest.pack_sequence_as(arrays, list(c)))

    def one_epoch(epoch):
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(rows_total, dtype=tf.int64), key)
        return tf.data.Dataset.from_tensor_slices(order).batch(block).flat_map(batches_of)

    return epochs.flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)

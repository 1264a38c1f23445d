"""Training data in Parquet shards, as `fit` reads it through tf.data without loading a split:
memory is bounded by the shuffle window, the files read at once and the prefetched batches,
whatever the number of rows.

Each epoch reads the shards in an order shuffled by (seed, epoch), interleaving INTERLEAVE
files at once. Within a file, rows come in windows of WINDOW_ROWS, each permuted by (seed,
epoch, file, window): a bounded shuffle buffer. The chunks go through the model's fixed
preprocessing in parallel, are rebatched to `batch_size` and prefetched. So the batches of
epoch k depend on (seed, k) alone, and a resumed run sees the same batches as an uninterrupted
one, as with `batches.ShuffledBatches` for data in memory.
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from mlpipe.features import input_matrices
from mlpipe.schema import Schema, encode_target
from mlpipe.training.batches import EpochBatches, steps
from mlpipe.util.shards import ShardedSplit

# Rows permuted together: the shuffle buffer (64k rows of 32 float32 columns: 8 MB).
WINDOW_ROWS = 65536
# Rows per element before preprocessing and rebatching: per-element costs vanish at this size.
CHUNK_ROWS = 16384
# Shards read at once, so that a batch mixes rows of several files.
INTERLEAVE = 4


class StreamedSplits:
    """The train and valid splits as shards, with the model's fixed preprocessing applied on the
    fly: what `fit.train` reads instead of feature matrices in memory."""

    def __init__(
        self,
        preprocessor: keras.Model,
        splits: dict[str, ShardedSplit],
        schema: Schema,
        outputs: list[str],
    ):
        self.preprocessor, self.splits, self.schema = preprocessor, splits, schema
        self.outputs = outputs
        self.train_rows = len(splits["train"])
        # The categorical features alone, for their text matrix
        texts = tuple(f for f in schema.features if f.kind != "numeric")
        self._texts = schema.model_copy(update={"features": texts})

    def train_labels(self) -> np.ndarray:
        """The encoded training labels alone (for `train.class_weight: balanced`)."""
        target = self.schema.target
        parts = [
            encode_labels(frame[target], self.schema)
            for frame in self.splits["train"].frames([target])
        ]
        return np.concatenate(parts)

    def batches(self, batch_size: int, seed: int, first_epoch: int, epochs: int) -> StreamedBatches:
        return StreamedBatches(self, batch_size, seed, first_epoch, epochs)

    def validation(self, batch_size: int) -> tf.data.Dataset:
        """The validation split in file order, unshuffled."""
        split = self.splits["valid"]
        files = tf.data.Dataset.range(len(split.files)).map(lambda f: (f, tf.constant(0, tf.int64)))
        return self._pipeline(split, files, batch_size, seed=None)

    def _signature(self) -> tuple:
        """(numeric matrix, text matrix, labels[, weights]) per chunk: a few tensors, not one
        per column, since each costs a conversion."""
        numeric = sum(f.kind == "numeric" for f in self.schema.features)
        target = tf.float32 if self.schema.classes is None else tf.int64
        signature = (
            tf.TensorSpec((None, numeric), tf.float32),
            tf.TensorSpec((None, len(self.schema.features) - numeric), tf.string),
            tf.TensorSpec((None,), target),
        )
        if self.schema.weight_column is None:
            return signature
        return (*signature, tf.TensorSpec((None,), tf.float32))

    def _named(self, numbers: tf.Tensor, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        """The model's named inputs, cut from the two matrices of a chunk."""
        named, i, j = {}, 0, 0
        for feature in self.schema.features:
            if feature.kind == "numeric":
                named[feature.input], i = numbers[:, i : i + 1], i + 1
            else:
                named[feature.input], j = texts[:, j : j + 1], j + 1
        return named

    def _chunks(self, split: ShardedSplit, file_index, seed, epoch):
        """Chunks of rows of one shard as (numeric matrix, text matrix, labels[, weights]),
        permuted within each window when a seed is given."""
        path = split.files[int(file_index)]
        reader = pq.ParquetFile(path)
        for number, batch in enumerate(reader.iter_batches(batch_size=WINDOW_ROWS)):
            arrays = self._arrays(batch, str(path))
            if seed is not None:
                key = (int(seed), int(epoch), int(file_index), number)
                order = np.random.default_rng(key).permutation(batch.num_rows)
                arrays = [a[order] for a in arrays]
            for start in range(0, batch.num_rows, CHUNK_ROWS):
                yield tuple(a[start : start + CHUNK_ROWS] for a in arrays)

    def _arrays(self, batch: pa.RecordBatch, where: str) -> list[np.ndarray]:
        """The matrices of `features.input_matrices`, row-major, and the encoded labels (and
        weights). Float columns go from Arrow to NumPy without pandas; prepare has refused
        infinities already."""
        features = self.schema.features
        numeric = [f.name for f in features if f.kind == "numeric"]
        types = batch.schema
        if all(pa.types.is_floating(types.field(name).type) for name in numeric):
            numbers = np.empty((batch.num_rows, len(numeric)), dtype=np.float32)
            for i, name in enumerate(numeric):
                numbers[:, i] = batch.column(name).to_numpy(zero_copy_only=False)
            columns = [f.name for f in features if f.kind != "numeric"]
            texts = input_matrices(batch.select(columns).to_pandas(), self._texts, where)[1]
        else:
            numbers, texts = input_matrices(batch.to_pandas(), self.schema, where)
            numbers = np.ascontiguousarray(numbers)
        target = batch.column(self.schema.target).to_pandas()
        arrays = [numbers, texts, encode_labels(target, self.schema)]
        if self.schema.weight_column is not None:
            weights = batch.column(self.schema.weight_column).to_numpy(zero_copy_only=False)
            arrays.append(weights.astype(np.float32))
        return arrays

    def _pipeline(
        self,
        split: ShardedSplit,
        files: tf.data.Dataset,
        batch_size: int,
        seed: int | None,
    ) -> tf.data.Dataset:
        """Batches of `split` from `files`, (file index, epoch) pairs."""
        signature = self._signature()

        def read(file_index, epoch):
            args = (file_index, -1 if seed is None else seed, epoch)
            return tf.data.Dataset.from_generator(
                lambda i, s, e: self._chunks(split, i, None if s < 0 else s, e),
                output_signature=signature,
                args=args,
            )

        def preprocess(numbers, texts, y, *w):
            features = self.preprocessor(self._named(numbers, texts), training=False)
            labels = y if len(self.outputs) == 1 else {name: y for name in self.outputs}
            return (features, labels, *w)

        data = files.interleave(
            read,
            cycle_length=min(INTERLEAVE, len(split.files)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        data = data.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        data = data.rebatch(batch_size).prefetch(tf.data.AUTOTUNE)
        return data.apply(tf.data.experimental.assert_cardinality(steps(len(split), batch_size)))


class StreamedBatches(EpochBatches):
    """The training batches for `fit`, one epoch per pass (Keras passes over it anew each
    epoch), the shards' order and the rows shuffled by the epoch number this callback sets."""

    def __init__(
        self, data: StreamedSplits, batch_size: int, seed: int, first_epoch: int, epochs: int
    ):
        super().__init__(first_epoch, epochs)
        self.steps_per_epoch = None
        split = data.splits["train"]
        n_files = len(split.files)

        def shuffled_files(epoch):
            key = tf.stack([tf.constant(seed, tf.int64), epoch])
            order = tf.random.experimental.stateless_shuffle(tf.range(n_files, dtype=tf.int64), key)
            return tf.data.Dataset.from_tensor_slices(order).map(lambda f: (f, epoch))

        # The epoch is read when Keras starts a pass (after on_epoch_begin), and reaches the
        # generators as an argument.
        epoch = tf.data.Dataset.range(1).map(lambda _: self.epoch.read_value())
        files = epoch.flat_map(shuffled_files)
        self.dataset = data._pipeline(split, files, batch_size, seed)


def encode_labels(target: pd.Series, schema: Schema) -> np.ndarray:
    """`schema.encode_target`, looked up once per distinct label rather than per row."""
    if schema.classes is None:
        return encode_target(target, schema)
    codes, labels = pd.factorize(target)
    return encode_target(pd.Series(labels), schema)[codes]

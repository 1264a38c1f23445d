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
import pyarrow.parquet as pq
import tensorflow as tf

from mlpipe.features import model_inputs, sample_weights
from mlpipe.schema import Schema, encode_target
from mlpipe.training.batches import steps
from mlpipe.util.shards import ShardedSplit

# Rows permuted together: the shuffle buffer (64k rows of 32 float32 columns: 8 MB).
WINDOW_ROWS = 65536
# Rows per element before preprocessing and rebatching: per-element costs vanish at this size.
CHUNK_ROWS = 4096
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

    def train_labels(self) -> np.ndarray:
        """The encoded training labels alone (for `train.class_weight: balanced`)."""
        target = self.schema.target
        parts = [
            encode_target(frame[target], self.schema)
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
        inputs = {
            f.input: tf.TensorSpec((None, 1), tf.float32 if f.kind == "numeric" else tf.string)
            for f in self.schema.features
        }
        target = tf.TensorSpec((None,), tf.float32 if self.schema.classes is None else tf.int64)
        if self.schema.weight_column is None:
            return inputs, target
        return inputs, target, tf.TensorSpec((None,), tf.float32)

    def _chunks(self, split: ShardedSplit, file_index, seed, epoch):
        """Chunks of rows of one shard as model inputs, permuted within each window when a
        seed is given."""
        path = split.files[int(file_index)]
        reader = pq.ParquetFile(path)
        for number, batch in enumerate(reader.iter_batches(batch_size=WINDOW_ROWS)):
            frame = batch.to_pandas()
            if seed is not None:
                key = (int(seed), int(epoch), int(file_index), number)
                frame = frame.take(np.random.default_rng(key).permutation(len(frame)))
            x = model_inputs(frame, self.schema, str(path))
            y = encode_target(frame[self.schema.target], self.schema)
            w = sample_weights(frame, self.schema)
            for start in range(0, len(frame), CHUNK_ROWS):
                rows = slice(start, start + CHUNK_ROWS)
                part = ({k: v[rows] for k, v in x.items()}, y[rows])
                yield part if w is None else (*part, w[rows])

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

        def preprocess(x, y, *w):
            features = self.preprocessor(x, training=False)
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


class StreamedBatches(keras.callbacks.Callback):
    """The training batches for `fit`, one epoch per pass (Keras passes over it anew each
    epoch), shuffled by the epoch number this callback sets; the interface of
    `batches.ShuffledBatches`."""

    def __init__(
        self, data: StreamedSplits, batch_size: int, seed: int, first_epoch: int, epochs: int
    ):
        super().__init__()
        self.epochs = epochs
        self.steps_per_epoch = None
        self.epoch = tf.Variable(first_epoch, dtype=tf.int64, trainable=False)
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

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch)

    def fit(self, model: keras.Model, callbacks=(), **fit_args) -> keras.callbacks.History:
        return model.fit(
            self.dataset,
            epochs=self.epochs,
            steps_per_epoch=self.steps_per_epoch,
            shuffle=False,
            callbacks=[self, *callbacks],
            verbose=0,
            **fit_args,
        )

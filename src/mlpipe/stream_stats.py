"""What `build` learns of a training split in Parquet shards, in one streaming pass per call, so
memory does not grow with the rows. Imports no TensorFlow.

- means and standard deviations (after imputation) are exact: Arrow's streaming `mean` and
  `variance` aggregates over the present values, then combined with the imputed ones;
- medians are approximate: Arrow's t-digest (`tdigest`, delta 1000), whose rank error is well
  under 0.5% of the rows (the tests check 0.5%);
- vocabularies are exact: per-batch counts of each category, added up.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.acero as acero
import pyarrow.compute as pc

from mlpipe.util.shards import ShardedSplit
from mlpipe.util.tables import to_categories

# One shard and a few batches in flight: Arrow's default reads four files and 16 batches ahead,
# 2 GB of wide 1M-row shards.
SCAN = {"batch_size": 65536, "batch_readahead": 2, "fragment_readahead": 1}
# t-digest compression: more centroids, a smaller error; 1000 keeps it under 0.5% of ranks.
TDIGEST_DELTA = 1000
# Rows sampled for the quantile encoding's knots.
QUANTILE_SAMPLE = 1_000_000


class ShardStats:
    """The statistics of `features.numeric_stats` and `features.vocabulary`, of shards."""

    def __init__(self, split: ShardedSplit):
        self.split = split

    def numeric_stats(self, names: list[str]) -> dict[str, list[float]]:
        """Median, and mean and standard deviation after imputation, per column (float64)."""
        stats: dict[str, list[float]] = {"median": [], "mean": [], "std": []}
        if not names:
            return stats
        row = self._aggregate(names)
        rows = row["__rows"]
        for i, _ in enumerate(names):
            present, mean_p, var_p = row[f"n{i}"], row[f"mean{i}"], row[f"var{i}"]
            median = row[f"median{i}"] if present else 0.0  # missing in every row
            missing = rows - present
            mean = ((mean_p or 0.0) * present + median * missing) / rows
            # Chan et al.'s combination of two groups: the present values, and `missing`
            # copies of the median.
            m2 = (var_p or 0.0) * present + present * ((mean_p or 0.0) - mean) ** 2
            m2 += missing * (median - mean) ** 2
            std = math.sqrt(m2 / rows)
            stats["median"].append(float(median))
            stats["mean"].append(float(mean))
            # A constant column carries no information: scale it by 1 rather than divide by 0.
            stats["std"].append(std if std > 0 else 1.0)
        return stats

    def robust_stats(self, names: list[str]) -> dict[str, list[float]]:
        """`features.robust_stats` of shards: the median and the interquartile range ((max -
        min) / 2 where that is 0, 1 for a constant column) of the present values, the quartiles
        from the t-digest (the medians' rank error)."""
        stats: dict[str, list[float]] = {"median": [], "mean": [], "std": []}
        if not names:
            return stats
        row = self._aggregate(names, robust=True)
        for i, _ in enumerate(names):
            q25, median, q75 = (row[f"q{q}_{i}"] or 0.0 for q in (25, 50, 75))
            low, high = row[f"min{i}"] or 0.0, row[f"max{i}"] or 0.0
            scale = float(q75 - q25) or float(high - low) / 2 or 1.0
            stats["median"].append(float(median))
            stats["mean"].append(float(median))
            stats["std"].append(scale)
        return stats

    def quantiles(self, names: list[str], levels: list[float]) -> list[list[float]]:
        """Per column, the quantiles at `levels` of its present values in a systematic sample
        of at most QUANTILE_SAMPLE rows (every k-th row of the split, so the rank error is about
        1 / sqrt(QUANTILE_SAMPLE), 0.1%); [0.0] for a column missing in every row. Arrow's
        streaming t-digest gives one quantile per aggregate, too slow for 129 per column."""
        if not names:
            return []
        dataset = self.split.dataset()
        every = max(1, math.ceil(dataset.count_rows() / QUANTILE_SAMPLE))
        kept: list[pa.RecordBatch] = []
        seen = 0
        for batch in dataset.to_batches(columns=names, **SCAN):
            first = (-seen) % every  # the batch's first row whose split-wide number is k * every
            kept.append(batch.take(pa.array(range(first, batch.num_rows, every))))
            seen += batch.num_rows
        schema = pa.schema([dataset.schema.field(name) for name in names])
        sample = pa.Table.from_batches(kept, schema=schema)
        found = []
        for name in names:
            x = sample[name].to_numpy(zero_copy_only=False).astype(np.float64)
            present = x[~np.isnan(x)]
            found.append(list(np.quantile(present, levels)) if len(present) else [0.0])
        return found

    def _aggregate(self, names: list[str], robust: bool = False) -> dict[str, Any]:
        """One Acero pass: rows, and per column count, mean, variance and t-digest median of the
        present values (NaN counts as missing); `robust`: their quartiles, minimum and maximum
        instead of the mean and variance."""
        columns = [f"c{i}" for i in range(len(names))]
        aggregates: list[tuple] = [([], "count_all", None, "__rows")]
        for i, column in enumerate(columns):
            if robust:
                present = pc.ScalarAggregateOptions(min_count=1)
                aggregates += [
                    (
                        column,
                        "tdigest",
                        pc.TDigestOptions(q=q / 100, delta=TDIGEST_DELTA),
                        f"q{q}_{i}",
                    )
                    for q in (25, 50, 75)
                ]
                aggregates += [
                    (column, "min", present, f"min{i}"),
                    (column, "max", present, f"max{i}"),
                ]
                continue
            aggregates += [
                (column, "count", pc.CountOptions(mode="only_valid"), f"n{i}"),
                (column, "mean", pc.ScalarAggregateOptions(min_count=1), f"mean{i}"),
                (column, "variance", pc.VarianceOptions(ddof=0, min_count=1), f"var{i}"),
                (column, "tdigest", pc.TDigestOptions(q=0.5, delta=TDIGEST_DELTA), f"median{i}"),
            ]
        row = self._run(names, aggregates)
        return {
            key: (value[0] if value else None) if isinstance(value, list) else value
            for key, value in row.items()
        }

    def _run(self, names: list[str], aggregates: list[tuple]) -> dict[str, Any]:
        """One Acero pass over the split: `aggregates` of the columns `names`, as float64 with
        NaN missing, named c0, c1...; the result's one row."""
        values = []
        for name in names:
            x = pc.field(name).cast(pa.float64())
            values.append(pc.if_else(pc.is_nan(x), pa.scalar(None, pa.float64()), x))
        columns = [f"c{i}" for i in range(len(names))]
        plan = acero.Declaration.from_sequence(
            [
                acero.Declaration("scan", acero.ScanNodeOptions(self.split.dataset(), **SCAN)),
                acero.Declaration("project", acero.ProjectNodeOptions(values, columns)),
                acero.Declaration("aggregate", acero.AggregateNodeOptions(aggregates)),
            ]
        )
        # One thread: the merge order of partial results, so the float64 sums, stay the same.
        return plan.to_table(use_threads=False).to_pylist()[0]

    def vocabulary(self, name: str) -> list[str]:
        """Categories seen in training, most frequent first (ties by text), missing ("")
        included when it occurs: exact counts, added up batch by batch."""
        counts: Counter = Counter()
        for batch in self.split.batches([name]):
            column = batch.column(0).to_pandas()
            counts.update(pd.Series(to_categories(column)).value_counts().to_dict())
        return sorted(counts, key=lambda v: (-counts[v], v))

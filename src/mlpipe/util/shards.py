"""Data in Parquet shards, read batch by batch so that memory does not grow with the rows: a
folder or glob of Parquet files as `data.source`, and the prepared splits written as shards
(`<prepared>/<split>/part-*.parquet`). Imports no TensorFlow.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mlpipe.util.files import file_sha256
from mlpipe.util.tables import PARQUET_SUFFIXES, DataError

GLOB_CHARS = "*?["
SHARD_PATTERN = "part-*.parquet"
# Rows per batch read from a shard: large enough that per-batch costs vanish, small enough
# that a batch of a wide table stays a few tens of MB.
READ_ROWS = 65536


def is_sharded_source(source: str) -> bool:
    """A folder or a glob of Parquet files, as opposed to one file or `sklearn:<name>`."""
    return not source.startswith("sklearn:") and (
        any(c in source for c in GLOB_CHARS) or Path(source).is_dir()
    )


def source_files(source: str) -> list[Path]:
    """The Parquet files of a folder (recursively) or a glob, in sorted order; none is an error."""
    if any(c in source for c in GLOB_CHARS):
        found = sorted(Path(p) for p in glob.glob(source, recursive=True))
    else:
        found = sorted(Path(source).rglob("*"))
    paths = [p for p in found if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES]
    if not paths:
        raise DataError(
            f"data.source: {source} holds no Parquet files (*{', *'.join(PARQUET_SUFFIXES)}); "
            "point it at a folder or glob of Parquet files with at least one row"
        )
    return paths


def common_schema(paths: Sequence[Path], where: str) -> pa.Schema:
    """The Arrow schema every file shares (read from the footers only); a file whose columns or
    types differ from the first file's is an error naming both and the column."""
    first = pq.read_schema(paths[0])
    for path in paths[1:]:
        schema = pq.read_schema(path)
        if schema.names != first.names:
            missing = [n for n in first.names if n not in schema.names]
            extra = [n for n in schema.names if n not in first.names]
            raise DataError(
                f"{where}: {path} has other columns than {paths[0]} (missing {missing}, extra "
                f"{extra}, or another order); every file of a folder source needs the same "
                "columns in the same order"
            )
        for field in schema:
            expected = first.field(field.name).type
            if field.type != expected and not pa.types.is_null(field.type):
                raise DataError(
                    f"{where}: column `{field.name}` is {field.type} in {path} but {expected} in "
                    f"{paths[0]}; write every file with the same column types"
                )
    if len(set(first.names)) < len(first.names):
        raise DataError(f"{where}: {paths[0]} has duplicate column names")
    return pa.schema([f.with_metadata(None) for f in first]).remove_metadata()


def count_rows(paths: Sequence[Path]) -> int:
    """Rows of Parquet files, from their footers."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


# The prepared splits as shards


def is_sharded(prepared_dir: Path) -> bool:
    """Whether prepare wrote the splits as shards (a folder per split) rather than one file."""
    return (Path(prepared_dir) / "train").is_dir()


def shard_dir(prepared_dir: Path, name: str) -> Path:
    return Path(prepared_dir) / name


def shard_name(index: int) -> str:
    return SHARD_PATTERN.replace("*", f"{index:05d}")


@dataclass(frozen=True)
class ShardedSplit:
    """One prepared split as Parquet shards, read in batches; never loaded whole."""

    name: str
    files: tuple[Path, ...]

    @classmethod
    def of(cls, prepared_dir: Path, name: str) -> ShardedSplit:
        files = tuple(sorted(shard_dir(prepared_dir, name).glob(SHARD_PATTERN)))
        if not files:
            raise DataError(
                f"{shard_dir(prepared_dir, name)}: no {SHARD_PATTERN} files; "
                "rerun `dvc repro prepare`"
            )
        return cls(name, files)

    def __len__(self) -> int:
        return count_rows(self.files)

    def dataset(self) -> ds.Dataset:
        return ds.dataset([str(p) for p in self.files], format="parquet")

    def batches(
        self, columns: Sequence[str] | None = None, rows: int = READ_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of at most `rows` rows, file by file, in order."""
        for path in self.files:
            yield from pq.ParquetFile(path).iter_batches(
                batch_size=rows, columns=None if columns is None else list(columns)
            )

    def frames(
        self, columns: Sequence[str] | None = None, rows: int = READ_ROWS
    ) -> Iterator[pd.DataFrame]:
        for batch in self.batches(columns, rows):
            yield batch.to_pandas()

    def head(self, rows: int) -> pd.DataFrame:
        return next(self.frames(rows=rows))

    def sha256(self) -> str:
        """One digest of the shards' bytes, in order."""
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(f"{path.name} {file_sha256(path)}\n".encode())
        return digest.hexdigest()


def read_sharded(prepared_dir: Path, names: Sequence[str]) -> dict[str, ShardedSplit]:
    return {name: ShardedSplit.of(prepared_dir, name) for name in names}


def split_input_files(prepared_dir: Path, names: Sequence[str]) -> list[Path]:
    """The files of the prepared splits `names`, as one file each or as shards."""
    if not is_sharded(prepared_dir):
        return [Path(prepared_dir) / f"{name}.parquet" for name in names]
    return [p for name in names for p in ShardedSplit.of(prepared_dir, name).files]

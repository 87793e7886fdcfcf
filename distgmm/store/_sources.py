"""Streaming readers for ingest sources: CSV, Parquet files and datasets, Zarr arrays, .npy and text, local or at fsspec URLs.

Each source yields row blocks of float values (plus the key column, when one is kept) in
source order, never the whole source. The parsing is done by kept readers, not by hand:

* **CSV**: pyarrow's streaming CSV reader (``pyarrow.csv.open_csv``). Empty cells and the
  usual null spellings (``NA``, ``NaN``, ``null``...) are missing values, i.e. NaN, as pandas
  writes and reads them: refused, or skipped with ``drop_nonfinite``. A header line is
  detected (a first line without a number) unless ``header`` says. pyarrow's errors do not
  name lines, so after one the block is read again with Python's ``csv`` module only to
  name the line and column.
* **Parquet**: ``pyarrow.dataset`` over one file or a directory of files (a dataset, with
  hive partitions ``key=value/`` read as columns), files in sorted path order, batches in
  file order. The default columns are every numeric column except partition keys, the key
  column and the index pandas may store (``__index_level_0__``).
* **Zarr**: any 2-D array, a variable in a group (``data.zarr/X``) or a point store, opened
  as :func:`~distgmm.store.open_points` opens them and read in row bands.
* **.npy**: memory-mapped when local, read sequentially from a URL.
* **text**: whitespace-separated numbers with ``#`` comments, as ``numpy.loadtxt`` reads them
  (blocks of lines are parsed by ``numpy.loadtxt``).

Rows with NaN/inf are an error naming the source, the row (or line) and the column, or, with
``drop_nonfinite``, skipped and recorded: :attr:`Source.dropped_rows` lists their 0-based
row numbers in the source (data rows, not counting a header), which ingest stores.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from distgmm._atomic import is_url, local_path, url_filesystem
from distgmm.errors import DistgmmInputError

__all__ = ["Source", "open_source", "SOURCE_FORMATS", "source_digest"]

logger = logging.getLogger(__name__)

SOURCE_FORMATS = ("text", "csv", "npy", "parquet", "zarr")
#: Largest magnitude accepted in float64: the mixture arithmetic squares differences and sums
#: them over the features, which stays finite (below 1.8e308) up to here for any number of
#: features distgmm handles; larger values would turn every distance into inf.
MAX_ABS_VALUE = 1e150
#: How the skip-the-row option is named where ingest is run (CLI and job files / Python).
DROP_NONFINITE_HINT = "pass --drop-nonfinite (drop_nonfinite=True) to skip such rows"
#: Lines (text) or rows (npy/Parquet/Zarr) read per block.
BLOCK_ROWS = 65536
#: Bytes per block of pyarrow's CSV reader.
CSV_BLOCK_BYTES = 16 * 2**20
#: Cells read as missing values (NaN) in CSV: pyarrow's defaults, which include "".
_CSV_NULLS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
              "1.#QNAN", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null"]


def _guess_format(path: str, storage_options: dict | None) -> str:
    lower = path.lower().rstrip("/")
    if lower.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    if lower.endswith(".npy"):
        return "npy"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith(".zarr"):
        return "zarr"
    fs, target = _filesystem(path, storage_options)
    if fs.isdir(target):
        names = {os.path.basename(p.rstrip("/")) for p in fs.ls(target, detail=False)}
        return "zarr" if names & {"zarr.json", ".zarray", ".zgroup"} else "parquet"
    return "text"


def _filesystem(path: str, storage_options: dict | None):
    if is_url(path):
        return url_filesystem(path, storage_options)
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), os.path.abspath(local_path(path))


def _parse_columns(columns: str | Sequence[str | int] | None) -> list[str | int] | None:
    """Turn ``"a,b"`` / ``"0,2"`` / a list into names (str) and indices (int)."""
    if columns is None:
        return None
    items = columns.split(",") if isinstance(columns, str) else list(columns)
    parsed: list[str | int] = []
    for item in items:
        if isinstance(item, int):
            parsed.append(item)
            continue
        item = item.strip()
        if not item:
            continue
        parsed.append(int(item) if item.lstrip("-").isdigit() else item)
    if not parsed:
        raise DistgmmInputError("--columns is empty; give names or 0-based indices, e.g. 'x,y' or '0,1'.")
    return parsed


def _resolve_columns(wanted: list[str | int] | None, names: list[str], where: str) -> list[int]:
    """Map wanted names/indices to 0-based indices into ``names``."""
    if wanted is None:
        return list(range(len(names)))
    indices = []
    for item in wanted:
        if isinstance(item, int):
            if not -len(names) <= item < len(names):
                raise DistgmmInputError(
                    f"{where}: column index {item} is out of range; the source has "
                    f"{len(names)} columns (0..{len(names) - 1}).")
            indices.append(item % len(names))
        else:
            if item not in names:
                raise DistgmmInputError(
                    f"{where}: no column named {item!r}; the source has columns "
                    f"{', '.join(map(repr, names))}.")
            indices.append(names.index(item))
    return indices


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def source_digest(path: str, storage_options: dict | None = None) -> str:
    """SHA-256 of a source's bytes (of every file under it, with their relative paths, for
    a Parquet dataset or a Zarr array): recorded with every ingest and append, so that a job
    step can tell that this very source is already in the store (a rerun skips it)."""
    fs, target = _filesystem(path, storage_options)
    digest = hashlib.sha256()
    files = [target] if fs.isfile(target) else sorted(fs.find(target))
    for name in files:
        if len(files) > 1 or name != target:
            digest.update(os.path.relpath(name, target).encode() + b"\0")
        with fs.open(name, "rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()


class Source:
    """A tabular numeric source read block by block.

    Attributes
    ----------
    path : str
        The file, directory or URL.
    columns : list of str
        Names of the selected columns (one per feature).
    native_dtype : numpy.dtype or None
        The source's own floating dtype (npy/Parquet/Zarr), or None when it has none.
    n_rows : int or None
        Rows in the source when known without reading it (npy, Parquet, Zarr).
    id_column : str or None
        The key column kept beside the points (``ids``), if any.
    dropped_rows : list of int
        0-based source rows skipped because they held NaN/inf (``drop_nonfinite``).
    max_abs : float
        Largest magnitude accepted (:data:`MAX_ABS_VALUE`, or less for a float32 store:
        set it to the destination's limit before reading).
    nonfinite_hint : str or None
        What the error for a NaN/inf cell suggests besides cleaning the data (the option
        that skips such rows where the caller has one).
    """

    format = ""

    def __init__(self, path: str, drop_nonfinite: bool, storage_options: dict | None = None,
                 id_column: str | None = None) -> None:
        self.path = path
        self.storage_options = storage_options
        self.drop_nonfinite = drop_nonfinite
        self.dropped_rows: list[int] = []
        self.max_abs = MAX_ABS_VALUE
        self.nonfinite_hint: str | None = DROP_NONFINITE_HINT
        self.columns: list[str] = []
        self.native_dtype: np.dtype | None = None
        self.n_rows: int | None = None
        self.id_column = id_column

    @property
    def n_features(self) -> int:
        """Number of selected columns."""
        return len(self.columns)

    @property
    def dropped(self) -> int:
        """Rows skipped so far because they held NaN/inf."""
        return len(self.dropped_rows)

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(values, ids)``: 2-D blocks ``(rows, n_features)`` of finite values and
        their keys (None without an id column), in source order."""
        raise NotImplementedError

    def _no_id_column(self) -> None:
        if self.id_column is not None:
            raise DistgmmInputError(
                f"{self.path}: --id-column applies to CSV and Parquet sources, not "
                f"{self.format}; drop it (rows are then known by their row number).")

    def _finite(self, block: np.ndarray, ids: np.ndarray | None, start: int,
                locate) -> tuple[np.ndarray, np.ndarray | None]:
        """Drop (and record) or reject rows holding NaN/inf, reject values beyond
        :attr:`max_abs`. ``start`` is the source row of the block's first row;
        ``locate(i, j)`` names cell ``(i, j)`` of the block."""
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(block) <= self.max_abs).all(axis=1)  # NaN compares False
        if not bad.any():
            return block, ids
        nonfinite = ~np.isfinite(block).all(axis=1)
        refused = bad & ~nonfinite if self.drop_nonfinite else bad
        if refused.any():
            i = int(np.argmax(refused))
            with np.errstate(invalid="ignore"):
                j = int(np.argmax(~(np.abs(block[i]) <= self.max_abs)))
            value = float(block[i, j])
            if np.isfinite(value):
                raise DistgmmInputError(
                    f"{locate(i, j)}: value {value!r} is too large in magnitude (beyond "
                    f"{self.max_abs:.3g}, {self._limit_reason()}); rescale the data, e.g. "
                    "divide every column by a constant.")
            shown = "empty (a missing value)" if np.isnan(value) and self._empty(i, j) else \
                f"value {value!r} is not finite"
            advice = f"clean the data or {self.nonfinite_hint}" if self.nonfinite_hint else \
                "clean the data first"
            raise DistgmmInputError(f"{locate(i, j)}: {shown}; {advice}.")
        self.dropped_rows.extend((start + np.flatnonzero(nonfinite)).tolist())
        keep = ~nonfinite
        return block[keep], None if ids is None else ids[keep]

    def _empty(self, i: int, j: int) -> bool:
        """Whether cell ``(i, j)`` of the current block was a missing value (CSV)."""
        return False

    def _limit_reason(self) -> str:
        if self.max_abs < MAX_ABS_VALUE:
            return "more than the store's float32 holds"
        return "the mixture arithmetic would overflow float64"


def _open_text(path: str, storage_options: dict | None):
    """A text handle on a local file or URL (compression from the extension)."""
    import fsspec

    return fsspec.open(path if is_url(path) else local_path(path), "rt", encoding="utf-8",
                       errors="replace", compression="infer", **(storage_options or {})).open()


class TextSource(Source):
    """Whitespace-separated numbers, as ``numpy.loadtxt`` reads them (``#`` comments, blank
    lines), parsed by ``numpy.loadtxt`` in blocks of lines."""

    format = "text"

    def __init__(self, path: str, *, columns, header: bool | None, drop_nonfinite: bool,
                 storage_options: dict | None = None, id_column: str | None = None) -> None:
        super().__init__(path, drop_nonfinite, storage_options, id_column)
        self._no_id_column()
        self._first_data_line, self._n_fields, names = self._sniff(header)
        self._usecols = _resolve_columns(_parse_columns(columns), names, path)
        self.columns = [names[i] for i in self._usecols]

    @staticmethod
    def _text(line: str) -> str:
        """The line without its ``#`` comment (as ``numpy.loadtxt(comments="#")``)."""
        return line.split("#", 1)[0]

    def _sniff(self, header: bool | None):
        """Find the first data line, its field count and the column names."""
        with _open_text(self.path, self.storage_options) as f:
            for lineno, line in enumerate(f, start=1):
                if self._text(line).strip():
                    cells = self._text(line).split()
                    break
            else:
                raise DistgmmInputError(
                    f"{self.path}: the file has no data rows; check that it is the right file.")
        if header:
            return lineno + 1, len(cells), [c.strip('"') for c in cells]
        return lineno, len(cells), [f"x{i}" for i in range(len(cells))]

    def _lines(self, f) -> Iterator[tuple[int, list[str]]]:
        """Yield ``(first line number, lines)`` blocks starting at the first data line."""
        for _ in range(self._first_data_line - 1):
            next(f, None)
        lineno = self._first_data_line
        while True:
            lines = list(itertools.islice(f, BLOCK_ROWS))
            if not lines:
                return
            yield lineno, lines
            lineno += len(lines)

    def _data_linenos(self, first_lineno: int, lines: list[str]) -> list[int]:
        return [n for n, line in enumerate(lines, start=first_lineno)
                if self._text(line).strip()]

    def _locate_problem(self, first_lineno: int, lines: list[str]) -> None:
        """Slow pass over a block that failed the fast parse: raise a located error."""
        for lineno, line in enumerate(lines, start=first_lineno):
            cells = self._text(line).split()
            if not cells:
                continue
            if len(cells) != self._n_fields:
                raise DistgmmInputError(
                    f"{self.path}, line {lineno}: {len(cells)} columns where earlier rows have "
                    f"{self._n_fields} (ragged rows); fix or remove that line.")
            for j, col in enumerate(self._usecols):
                if not _is_number(cells[col]):
                    raise DistgmmInputError(
                        f"{self.path}, line {lineno}, column {col + 1} ({self.columns[j]}): "
                        f"{cells[col]!r} is not a number; fix the cell or choose other "
                        "--columns.")

    def blocks(self) -> Iterator[tuple[np.ndarray, None]]:
        start = 0
        with _open_text(self.path, self.storage_options) as f:
            for first_lineno, lines in self._lines(f):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        block = np.loadtxt(lines, comments="#", ndmin=2, dtype=np.float64)
                    if block.shape[0] and block.shape[1] != self._n_fields:
                        raise ValueError("ragged")
                except ValueError:
                    self._locate_problem(first_lineno, lines)
                    raise  # the slow pass always finds what loadtxt did
                if block.shape[0] == 0:
                    continue
                block = block[:, self._usecols]
                linenos = self._data_linenos(first_lineno, lines)

                def locate(i, j, _linenos=linenos):
                    return (f"{self.path}, line {_linenos[i]}, column {self._usecols[j] + 1} "
                            f"({self.columns[j]})")

                yield self._finite(block, None, start, locate)
                start += block.shape[0]


class CsvSource(Source):
    """CSV read by pyarrow's streaming CSV reader (see the module docstring)."""

    format = "csv"

    def __init__(self, path: str, *, columns, header: bool | None, drop_nonfinite: bool,
                 storage_options: dict | None = None, id_column: str | None = None) -> None:
        super().__init__(path, drop_nonfinite, storage_options, id_column)
        self.delimiter = "\t" if path.lower().rstrip("/").endswith(".tsv") else ","
        first = self._first_line()
        self.has_header = header if header is not None else \
            not any(_is_number(c) for c in first)
        names = [c.strip() for c in first] if self.has_header else \
            [f"x{i}" for i in range(len(first))]
        self._names = names
        wanted = _parse_columns(columns)
        if wanted is None:
            wanted = [n for n in names if n != id_column]
        self._usecols = _resolve_columns(wanted, names, path)
        self.columns = [names[i] for i in self._usecols]
        if id_column is not None:
            if id_column not in names:
                raise DistgmmInputError(
                    f"{path}: no column named {id_column!r} for --id-column; the source has "
                    f"columns {', '.join(map(repr, names))}.")
            if id_column in self.columns:
                raise DistgmmInputError(
                    f"{path}: --id-column {id_column!r} is also one of the --columns; a key is "
                    "not a feature, leave it out of --columns.")
        self._block: Any = None

    def _first_line(self) -> list[str]:
        with _open_text(self.path, self.storage_options) as f:
            for line in f:
                if line.strip():
                    return next(csv.reader([line], delimiter=self.delimiter))
        raise DistgmmInputError(f"{self.path}: the file has no data rows; check that it is the "
                                "right file.")

    def _reader(self):
        import pyarrow as pa
        import pyarrow.csv as pacsv

        read = pacsv.ReadOptions(column_names=self._names, skip_rows=1 if self.has_header else 0,
                                 block_size=CSV_BLOCK_BYTES)
        parse = pacsv.ParseOptions(delimiter=self.delimiter)
        include = self.columns + ([self.id_column] if self.id_column else [])
        convert = pacsv.ConvertOptions(
            include_columns=include, column_types={c: pa.float64() for c in self.columns},
            null_values=_CSV_NULLS, strings_can_be_null=True)
        fs, target = _filesystem(self.path, self.storage_options)
        stream = fs.open(target, "rb", compression="infer")
        return stream, pacsv.open_csv(stream, read_options=read, parse_options=parse,
                                      convert_options=convert)

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        import pyarrow as pa

        start = 0
        try:
            stream, reader = self._reader()
        except pa.ArrowInvalid as exc:
            self._locate(0, exc)
        with stream:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except pa.ArrowInvalid as exc:
                    self._locate(start, exc)
                block = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False)
                                         for c in self.columns]).astype(np.float64, copy=False)
                ids = None
                if self.id_column:
                    ids = batch.column(self.id_column).to_numpy(zero_copy_only=False)
                self._block = batch

                def locate(i, j, _start=start):
                    return (f"{self.path}, row {_start + i + 1} (line {self._line(_start + i)}), "
                            f"column {self._usecols[j] + 1} ({self.columns[j]})")

                yield self._finite(block, ids, start, locate)
                start += batch.num_rows

    def _empty(self, i: int, j: int) -> bool:
        return self._block is not None and not self._block.column(self.columns[j]).is_valid(
        ).to_numpy(zero_copy_only=False)[i]

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        """``(line number, cells)`` of every data row, with Python's csv module (errors only)."""
        with _open_text(self.path, self.storage_options) as f:
            reader = csv.reader(f, delimiter=self.delimiter)
            for cells in reader:
                if not cells or cells == [""]:
                    continue
                yield reader.line_num, cells

    def _line(self, row: int) -> int:
        """The line of 0-based data row ``row`` (slow: for error messages)."""
        rows = self._rows()
        if self.has_header:
            next(rows, None)
        for index, (line, _) in enumerate(rows):
            if index == row:
                return line
        return -1

    def _locate(self, start: int, exc: Exception) -> None:
        """Name the line and column pyarrow failed on (it does not), from data row ``start``."""
        rows = self._rows()
        if self.has_header:
            next(rows, None)
        for index, (line, cells) in enumerate(rows):
            if index < start:
                continue
            if len(cells) != len(self._names):
                raise DistgmmInputError(
                    f"{self.path}, line {line}: {len(cells)} columns where the header or first "
                    f"row has {len(self._names)} (ragged rows); fix or remove that line.")
            for j, col in enumerate(self._usecols):
                cell = cells[col].strip()
                if cell not in _CSV_NULLS and not _is_number(cell):
                    raise DistgmmInputError(
                        f"{self.path}, line {line}, column {col + 1} ({self.columns[j]}): "
                        f"{cells[col]!r} is not a number; fix the cell or choose other "
                        "--columns.")
        message = " ".join(str(exc).split())
        raise DistgmmInputError(f"{self.path}: not readable as CSV ({message}); check the file "
                                "and the --id-column.")


class NpySource(Source):
    """A ``.npy`` file: memory-mapped when local, read in sequential row blocks from a URL."""

    format = "npy"

    def __init__(self, path: str, *, columns, drop_nonfinite: bool,
                 storage_options: dict | None = None, id_column: str | None = None) -> None:
        super().__init__(path, drop_nonfinite, storage_options, id_column)
        self._no_id_column()
        if is_url(path):
            self._array = None
            shape, fortran, dtype = self._remote_header()
        else:
            try:
                self._array = np.load(local_path(path), mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise DistgmmInputError(f"{path}: not a readable numeric .npy file ({exc}).") from None
            shape, fortran, dtype = self._array.shape, False, self._array.dtype
        if len(shape) == 1:
            shape = (shape[0], 1)
            if self._array is not None:
                self._array = self._array.reshape(-1, 1)
        if len(shape) != 2:
            raise DistgmmInputError(f"{path}: array has shape {shape}; expected 2-D (rows, features).")
        if fortran:
            raise DistgmmInputError(f"{path}: a Fortran-ordered array cannot be streamed from a "
                                    "URL; save it C-ordered (numpy.ascontiguousarray).")
        kind = dtype.kind
        if kind not in "fiu":
            raise DistgmmInputError(f"{path}: array dtype {dtype} is not numeric; save a float array.")
        if shape[0] == 0:
            raise DistgmmInputError(f"{path}: the array has no rows; check that it is the right file.")
        if kind == "f" and dtype.itemsize in (4, 8):
            self.native_dtype = dtype.newbyteorder("=")
        self._shape, self._dtype = shape, dtype
        self.n_rows = int(shape[0])
        names = [f"x{i}" for i in range(shape[1])]
        self._usecols = _resolve_columns(_parse_columns(columns), names, path)
        self.columns = [names[i] for i in self._usecols]

    def _remote_header(self):
        fs, target = _filesystem(self.path, self.storage_options)
        with fs.open(target, "rb") as handle:
            try:
                version = np.lib.format.read_magic(handle)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(handle)
            except ValueError as exc:
                raise DistgmmInputError(f"{self.path}: not a readable numeric .npy file "
                                        f"({exc}).") from None
            self._offset = handle.tell()
        return shape, fortran, dtype

    def _row_blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        if self._array is not None:
            for start in range(0, self.n_rows, BLOCK_ROWS):
                yield start, np.asarray(self._array[start:start + BLOCK_ROWS])
            return
        fs, target = _filesystem(self.path, self.storage_options)
        row_bytes = self._shape[1] * self._dtype.itemsize
        with fs.open(target, "rb") as handle:
            handle.seek(self._offset)
            for start in range(0, self.n_rows, BLOCK_ROWS):
                n = min(BLOCK_ROWS, self.n_rows - start)
                data = handle.read(n * row_bytes)
                if len(data) != n * row_bytes:
                    raise DistgmmInputError(f"{self.path}: the file ends at row {start + len(data) // row_bytes} "
                                            f"of {self.n_rows}; it is truncated.")
                yield start, np.frombuffer(data, dtype=self._dtype).reshape(n, self._shape[1])

    def blocks(self) -> Iterator[tuple[np.ndarray, None]]:
        cols = self._usecols
        for start, rows in self._row_blocks():
            yield self._finite(np.asarray(rows[:, cols]), None, start,
                               lambda i, j, s=start: f"{self.path}, row {s + i}, column {cols[j]}")


class ParquetSource(Source):
    """A Parquet file or dataset (directory, hive partitions) read with ``pyarrow.dataset``."""

    format = "parquet"

    def __init__(self, path: str, *, columns, drop_nonfinite: bool,
                 storage_options: dict | None = None, id_column: str | None = None) -> None:
        super().__init__(path, drop_nonfinite, storage_options, id_column)
        try:
            import pyarrow as pa
            import pyarrow.dataset as ds
        except ImportError:  # pragma: no cover - depends on the environment
            raise DistgmmInputError(
                "Parquet ingest needs pyarrow; install it with `pip install pyarrow`."
            ) from None
        fs, target = _filesystem(path, storage_options)
        try:
            if fs.isdir(target):
                found = ds.dataset(target, filesystem=fs, format="parquet", partitioning="hive")
                self._dataset = ds.dataset(sorted(found.files), filesystem=fs, format="parquet",
                                           partitioning="hive", partition_base_dir=target)
                partitions = set(found.partitioning.schema.names) if found.partitioning else set()
            else:
                self._dataset = ds.dataset(target, filesystem=fs, format="parquet")
                partitions = set()
            n_rows = self._dataset.count_rows()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DistgmmInputError(f"{path}: not a readable Parquet file or dataset "
                                    f"({' '.join(str(exc).split())}).") from None
        schema = self._dataset.schema
        names = list(schema.names)
        numeric = {n for n in names if pa.types.is_floating(schema.field(n).type)
                   or pa.types.is_integer(schema.field(n).type)}
        wanted = _parse_columns(columns)
        if wanted is None:  # pandas writes its index as __index_level_N__: not a feature
            wanted = [n for n in names if n in numeric and n not in partitions and
                      n != id_column and not n.startswith("__index_level_")]
        self._usecols = _resolve_columns(wanted, names, path)
        self.columns = [names[i] for i in self._usecols]
        if not self.columns:
            raise DistgmmInputError(f"{path}: no numeric columns; choose columns with --columns.")
        for name in self.columns:
            if name not in numeric:
                raise DistgmmInputError(f"{path}, column {name!r}: type {schema.field(name).type} "
                                        "is not numeric; choose numeric --columns.")
        if id_column is not None and id_column not in names:
            raise DistgmmInputError(f"{path}: no column named {id_column!r} for --id-column; the "
                                    f"source has columns {', '.join(map(repr, names))}.")
        if id_column is not None and id_column in self.columns:
            raise DistgmmInputError(f"{path}: --id-column {id_column!r} is also one of the "
                                    "--columns; a key is not a feature, leave it out of --columns.")
        if n_rows == 0:
            raise DistgmmInputError(f"{path}: the source has no rows; check that it is the right file.")
        self.n_rows = int(n_rows)
        float_types = {str(schema.field(n).type) for n in self.columns}
        if float_types in ({"float"}, {"double"}):
            self.native_dtype = np.dtype("float32" if float_types == {"float"} else "float64")

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        import pyarrow as pa

        dtype = self.native_dtype or np.dtype("float64")
        wanted = self.columns + ([self.id_column] if self.id_column else [])
        start = 0
        for batch in self._dataset.to_batches(columns=wanted, batch_size=BLOCK_ROWS,
                                              use_threads=False):
            if batch.num_rows == 0:
                continue
            block = np.empty((batch.num_rows, len(self.columns)), dtype=dtype)
            for j, name in enumerate(self.columns):
                # Nulls become NaN and are then handled like any non-finite cell.
                block[:, j] = batch.column(name).cast(pa.from_numpy_dtype(dtype)).to_numpy(
                    zero_copy_only=False)
            ids = batch.column(self.id_column).to_numpy(zero_copy_only=False) \
                if self.id_column else None
            yield self._finite(block, ids, start, lambda i, j, s=start:
                               f"{self.path}, row {s + i}, column {self.columns[j]!r}")
            start += batch.num_rows


class ZarrSource(Source):
    """A 2-D Zarr array, an array in a group (``data.zarr/X``) or a point store's points,
    read in row bands as :func:`~distgmm.store.open_points` opens them."""

    format = "zarr"

    def __init__(self, path: str, *, columns, drop_nonfinite: bool,
                 storage_options: dict | None = None, id_column: str | None = None) -> None:
        super().__init__(path, drop_nonfinite, storage_options, id_column)
        self._no_id_column()
        from distgmm.store._points import open_points

        self._points = open_points(path, storage_options)
        names = self._points.columns or [f"x{i}" for i in range(self._points.n_features)]
        self._usecols = _resolve_columns(_parse_columns(columns), names, path)
        self.columns = [names[i] for i in self._usecols]
        self.n_rows = self._points.n_rows
        if self.n_rows == 0:
            raise DistgmmInputError(f"{path}: the array has no rows; check that it is the right one.")
        if self._points.dtype.name in ("float32", "float64"):
            self.native_dtype = self._points.dtype

    def blocks(self) -> Iterator[tuple[np.ndarray, None]]:
        points = self._points.points
        start = 0
        for i in range(points.numblocks[0]):
            block = np.asarray(points.blocks[i].compute(scheduler="synchronous"))
            yield self._finite(block[:, self._usecols], None, start,
                               lambda r, j, s=start: f"{self.path}, row {s + r}, column "
                                                     f"{self._usecols[j]} ({self.columns[j]})")
            start += block.shape[0]


def open_source(path: str, *, format: str | None = None,
                columns: str | Sequence[str | int] | None = None, header: bool | None = None,
                drop_nonfinite: bool = False, storage_options: dict | None = None,
                id_column: str | None = None) -> Source:
    """Open an ingest source.

    Parameters
    ----------
    path : str
        Local path or fsspec URL: a file, a Parquet dataset directory, or a Zarr array.
    format : {"text", "csv", "npy", "parquet", "zarr"}, optional
        Default from the name (``.csv``/``.tsv``, ``.npy``, ``.parquet``/``.pq``, ``.zarr``),
        else a directory is Zarr if it holds Zarr metadata, else a Parquet dataset; anything
        else is whitespace text.
    columns : str or sequence of str/int, optional
        Columns to read, by name or 0-based index (``"x,y"`` or ``"0,2"``); default all
        (all numeric columns but partition keys for Parquet), except ``id_column``.
    header : bool, optional
        Whether a CSV/text file starts with a header line; default: detected for CSV (a first
        line with no numeric cell), no header for text.
    drop_nonfinite : bool
        Skip rows holding NaN/inf or missing values (recorded in ``Source.dropped_rows``)
        instead of failing.
    storage_options : dict, optional
        fsspec options for a URL.
    id_column : str, optional
        CSV/Parquet column kept as each row's key (not a feature).
    """
    fs, target = _filesystem(path, storage_options)
    try:
        exists = fs.exists(target)
    except Exception as exc:  # credentials, endpoint, network
        raise DistgmmInputError(f"source {path} cannot be reached ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())}); check the URL and "
                                "--storage-option values.") from None
    if not exists:
        raise DistgmmInputError(f"source {path} does not exist; check the path.")
    fmt = format or _guess_format(path, storage_options)
    if fmt not in SOURCE_FORMATS:
        raise DistgmmInputError(f"unknown source format {fmt!r}; use one of {', '.join(SOURCE_FORMATS)}.")
    is_file = fs.isfile(target)
    if fmt in ("text", "csv", "npy") and not is_file:
        raise DistgmmInputError(f"source {path} is a directory, not a {fmt} file; pass a file "
                                "(a directory is read as a Parquet dataset or a Zarr array).")
    if is_file and fs.size(target) == 0:
        raise DistgmmInputError(f"{path}: the file is empty; check that it is the right file.")
    common = dict(drop_nonfinite=drop_nonfinite, storage_options=storage_options,
                  id_column=id_column)
    if fmt == "text":
        return TextSource(path, columns=columns, header=header, **common)
    if fmt == "csv":
        return CsvSource(path, columns=columns, header=header, **common)
    if header is not None:
        raise DistgmmInputError(f"--header/--no-header only apply to text and CSV, not {fmt}.")
    if fmt == "npy":
        return NpySource(path, columns=columns, **common)
    if fmt == "zarr":
        return ZarrSource(path, columns=columns, **common)
    return ParquetSource(path, columns=columns, **common)

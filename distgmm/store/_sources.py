"""Streaming readers for ingest sources (text, CSV, .npy, Parquet), yielding row blocks with located errors."""

from __future__ import annotations

import csv
import itertools
import logging
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from distgmm.errors import DistgmmInputError

__all__ = ["Source", "open_source", "SOURCE_FORMATS"]

logger = logging.getLogger(__name__)

SOURCE_FORMATS = ("text", "csv", "npy", "parquet")
#: Largest magnitude accepted in float64: the mixture arithmetic squares differences and sums
#: them over the features, which stays finite (below 1.8e308) up to here for any number of
#: features distgmm handles; larger values would turn every distance into inf.
MAX_ABS_VALUE = 1e150
#: How the skip-the-row option is named where ingest is run (CLI and job files / Python).
DROP_NONFINITE_HINT = "pass --drop-nonfinite (drop_nonfinite=True) to skip such rows"
#: Lines (text/CSV) or rows (npy/Parquet) read per block.
BLOCK_ROWS = 65536


def _guess_format(path: str) -> str:
    lower = path.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(".npy"):
        return "npy"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    return "text"


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
                    f"{len(names)} columns (0..{len(names) - 1})."
                )
            indices.append(item % len(names))
        else:
            if item not in names:
                raise DistgmmInputError(
                    f"{where}: no column named {item!r}; the source has columns "
                    f"{', '.join(map(repr, names))}."
                )
            indices.append(names.index(item))
    return indices


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class Source:
    """A tabular numeric source read block by block.

    Attributes
    ----------
    path : str
        The file.
    columns : list of str
        Names of the selected columns (one per feature).
    native_dtype : numpy.dtype or None
        The file's own floating dtype (npy/Parquet), or None when it has none (text).
    dropped : int
        Rows skipped so far because they held NaN/inf (``drop_nonfinite``).
    max_abs : float
        Largest magnitude accepted (:data:`MAX_ABS_VALUE`, or less for a float32 store:
        set it to the destination's limit before reading).
    nonfinite_hint : str or None
        What the error for a NaN/inf cell suggests besides cleaning the data (the option
        that skips such rows where the caller has one).
    """

    format = ""

    def __init__(self, path: str, drop_nonfinite: bool) -> None:
        self.path = path
        self.drop_nonfinite = drop_nonfinite
        self.dropped = 0
        self.max_abs = MAX_ABS_VALUE
        self.nonfinite_hint: str | None = DROP_NONFINITE_HINT
        self.columns: list[str] = []
        self.native_dtype: np.dtype | None = None

    @property
    def n_features(self) -> int:
        """Number of selected columns."""
        return len(self.columns)

    def blocks(self) -> Iterator[np.ndarray]:
        """Yield 2-D blocks ``(rows, n_features)`` of finite values, in file order."""
        raise NotImplementedError

    def _finite(self, block: np.ndarray, locate) -> np.ndarray:
        """Drop (and count) or reject rows holding NaN/inf, reject values beyond
        :attr:`max_abs`; ``locate(i, j)`` names cell ``(i, j)``."""
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(block) <= self.max_abs).all(axis=1)  # NaN compares False
        if not bad.any():
            return block
        nonfinite = ~np.isfinite(block).all(axis=1)
        if self.drop_nonfinite:
            self.dropped += int(nonfinite.sum())
            block, bad = block[~nonfinite], bad[~nonfinite]
            if not bad.any():
                return block
        i = int(np.argmax(bad))
        with np.errstate(invalid="ignore"):
            j = int(np.argmax(~(np.abs(block[i]) <= self.max_abs)))
        value = float(block[i, j])
        if np.isfinite(value):
            raise DistgmmInputError(
                f"{locate(i, j)}: value {value!r} is too large in magnitude (beyond "
                f"{self.max_abs:.3g}, {self._limit_reason()}); rescale the data, e.g. "
                "divide every column by a constant.")
        advice = f"clean the data or {self.nonfinite_hint}" if self.nonfinite_hint else \
            "clean the data first"
        raise DistgmmInputError(f"{locate(i, j)}: value {value!r} is not finite; {advice}.")

    def _limit_reason(self) -> str:
        if self.max_abs < MAX_ABS_VALUE:
            return "more than the store's float32 holds"
        return "the mixture arithmetic would overflow float64"


class DelimitedSource(Source):
    """Whitespace-separated text (as ``numpy.loadtxt`` reads it) or CSV, streamed line by line."""

    def __init__(self, path: str, *, csv_format: bool, columns, header: bool | None,
                 drop_nonfinite: bool) -> None:
        super().__init__(path, drop_nonfinite)
        self.format = "csv" if csv_format else "text"
        self.delimiter = "," if csv_format else None
        self._first_data_line, self._n_fields, names, self.has_header = self._sniff(header)
        self._usecols = _resolve_columns(_parse_columns(columns), names, path)
        self.columns = [names[i] for i in self._usecols]

    def _split(self, line: str) -> list[str]:
        if self.delimiter is None:
            return line.split()
        return [cell.strip() for cell in next(csv.reader([line]))]

    @staticmethod
    def _text(line: str) -> str:
        """The line without its ``#`` comment (as ``numpy.loadtxt(comments="#")``)."""
        return line.split("#", 1)[0]

    @staticmethod
    def _is_data(text: str) -> bool:
        return bool(text.strip())

    def _count_fields(self, text: str) -> int:
        if self.delimiter is None:
            return len(text.split())
        if '"' in text:
            return len(self._split(text))
        return text.count(",") + 1

    def _sniff(self, header: bool | None):
        """Find the first data line, its field count and the column names."""
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                if self._is_data(self._text(line)):
                    cells = self._split(self._text(line))
                    break
            else:
                raise DistgmmInputError(
                    f"{self.path}: the file has no data rows; check that it is the right file."
                )
        is_header = header if header is not None else (
            self.delimiter is not None and not any(_is_number(c) for c in cells))
        if is_header:
            names = [c.strip().strip('"') for c in cells]
            return lineno + 1, len(cells), names, True
        return lineno, len(cells), [f"x{i}" for i in range(len(cells))], False

    def _lines(self, f) -> Iterator[tuple[int, list[str]]]:
        """Yield ``(first line number, lines)`` blocks starting at the first data line."""
        lineno = 1
        for _ in range(self._first_data_line - 1):
            next(f, None)
            lineno += 1
        while True:
            lines = list(itertools.islice(f, BLOCK_ROWS))
            if not lines:
                return
            yield lineno, lines
            lineno += len(lines)

    def _locate_problem(self, first_lineno: int, lines: list[str]) -> None:
        """Slow pass over a block that failed the fast parse: raise a located error."""
        for lineno, line in enumerate(lines, start=first_lineno):
            text = self._text(line)
            if not self._is_data(text):
                continue
            cells = self._split(text)
            if len(cells) != self._n_fields:
                raise DistgmmInputError(
                    f"{self.path}, line {lineno}: {len(cells)} columns where earlier rows have "
                    f"{self._n_fields} (ragged rows); fix or remove that line."
                )
            for col in self._usecols:
                if not _is_number(cells[col]):
                    raise DistgmmInputError(
                        f"{self.path}, line {lineno}, column {col + 1} ({self.columns[self._usecols.index(col)]}): "
                        f"{cells[col]!r} is not a number; fix the cell or choose other --columns."
                    )

    def _data_linenos(self, first_lineno: int, lines: list[str]) -> list[int]:
        return [n for n, line in enumerate(lines, start=first_lineno)
                if self._is_data(self._text(line))]

    def blocks(self) -> Iterator[np.ndarray]:
        # With all columns, loadtxt itself rejects ragged rows; with a subset it ignores extra
        # fields, so field counts are then checked in Python (slower).
        every = self._usecols == list(range(self._n_fields))
        kwargs = dict(delimiter=self.delimiter, comments="#", ndmin=2, dtype=np.float64,
                      usecols=None if every else self._usecols)
        if self.delimiter is not None:
            kwargs["quotechar"] = '"'
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for first_lineno, lines in self._lines(f):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        block = np.loadtxt(lines, **kwargs)
                    if block.shape[0] and block.shape[1] != self._n_fields and every:
                        raise ValueError("ragged")
                    if not every:
                        texts = (self._text(ln) for ln in lines)
                        counts = {self._count_fields(t) for t in texts if self._is_data(t)}
                        if counts - {self._n_fields}:
                            raise ValueError("ragged")
                except ValueError:
                    self._locate_problem(first_lineno, lines)
                    raise  # the slow pass always finds what loadtxt did
                if block.shape[0] == 0:
                    continue
                block = block.reshape(-1, len(self._usecols))
                linenos = None

                def locate(i, j, _first=first_lineno, _lines=lines):
                    nonlocal linenos
                    if linenos is None:
                        linenos = self._data_linenos(_first, _lines)
                    return (f"{self.path}, line {linenos[i]}, column {self._usecols[j] + 1} "
                            f"({self.columns[j]})")

                yield self._finite(block, locate)


class NpySource(Source):
    """A ``.npy`` file, memory-mapped and read in row slices."""

    format = "npy"

    def __init__(self, path: str, *, columns, drop_nonfinite: bool) -> None:
        super().__init__(path, drop_nonfinite)
        try:
            self._array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise DistgmmInputError(f"{path}: not a readable numeric .npy file ({exc}).") from None
        if self._array.ndim == 1:
            self._array = self._array.reshape(-1, 1)
        if self._array.ndim != 2:
            raise DistgmmInputError(
                f"{path}: array has shape {self._array.shape}; expected 2-D (rows, features)."
            )
        kind = self._array.dtype.kind
        if kind not in "fiu":
            raise DistgmmInputError(
                f"{path}: array dtype {self._array.dtype} is not numeric; save a float array."
            )
        if self._array.shape[0] == 0:
            raise DistgmmInputError(f"{path}: the array has no rows; check that it is the right file.")
        if kind == "f" and self._array.dtype.itemsize in (4, 8):
            self.native_dtype = self._array.dtype.newbyteorder("=")
        names = [f"x{i}" for i in range(self._array.shape[1])]
        self._usecols = _resolve_columns(_parse_columns(columns), names, path)
        self.columns = [names[i] for i in self._usecols]

    @property
    def n_rows(self) -> int:
        """Rows in the file."""
        return int(self._array.shape[0])

    def blocks(self) -> Iterator[np.ndarray]:
        cols = self._usecols
        for start in range(0, self.n_rows, BLOCK_ROWS):
            block = np.asarray(self._array[start:start + BLOCK_ROWS][:, cols])
            yield self._finite(
                block, lambda i, j, s=start: f"{self.path}, row {s + i}, column {cols[j]}")


class ParquetSource(Source):
    """A Parquet file streamed with ``pyarrow.parquet.ParquetFile.iter_batches``."""

    format = "parquet"

    def __init__(self, path: str, *, columns, drop_nonfinite: bool) -> None:
        super().__init__(path, drop_nonfinite)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - depends on the environment
            raise DistgmmInputError(
                "Parquet ingest needs pyarrow; install it with `pip install distgmm[parquet]`."
            ) from None
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DistgmmInputError(f"{path}: not a readable Parquet file ({exc}).") from None
        schema = self._file.schema_arrow
        names = list(schema.names)
        wanted = _parse_columns(columns)
        if wanted is None:
            wanted = [n for n in names
                      if pa.types.is_floating(schema.field(n).type)
                      or pa.types.is_integer(schema.field(n).type)]
        self._usecols = _resolve_columns(wanted, names, path)
        self.columns = [names[i] for i in self._usecols]
        if not self.columns:
            raise DistgmmInputError(f"{path}: no numeric columns; choose columns with --columns.")
        types = [schema.field(n).type for n in self.columns]
        for name, typ in zip(self.columns, types):
            if not (pa.types.is_floating(typ) or pa.types.is_integer(typ)):
                raise DistgmmInputError(
                    f"{path}, column {name!r}: type {typ} is not numeric; choose numeric --columns."
                )
        if self._file.metadata.num_rows == 0:
            raise DistgmmInputError(f"{path}: the file has no rows; check that it is the right file.")
        float_types = {str(t) for t in types}
        if float_types in ({"float"}, {"double"}):
            self.native_dtype = np.dtype("float32" if float_types == {"float"} else "float64")

    @property
    def n_rows(self) -> int:
        """Rows in the file."""
        return int(self._file.metadata.num_rows)

    def blocks(self) -> Iterator[np.ndarray]:
        import pyarrow as pa

        dtype = self.native_dtype or np.dtype("float64")
        start = 0
        for batch in self._file.iter_batches(batch_size=BLOCK_ROWS, columns=self.columns):
            block = np.empty((batch.num_rows, len(self.columns)), dtype=dtype)
            for j, column in enumerate(batch.columns):
                # Nulls become NaN and are then handled like any non-finite cell.
                block[:, j] = column.cast(pa.from_numpy_dtype(dtype)).to_numpy(zero_copy_only=False)
            yield self._finite(
                block, lambda i, j, s=start: f"{self.path}, row {s + i}, column {self.columns[j]!r}")
            start += batch.num_rows


def open_source(path: str, *, format: str | None = None, columns: str | Sequence[str | int] | None = None,
                header: bool | None = None, drop_nonfinite: bool = False) -> Source:
    """Open an ingest source.

    Parameters
    ----------
    path : str
        Local file.
    format : {"text", "csv", "npy", "parquet"}, optional
        Defaults from the file extension (``.csv``, ``.npy``, ``.parquet``/``.pq``, else text).
    columns : str or sequence of str/int, optional
        Columns to read, by name or 0-based index (``"x,y"`` or ``"0,2"``); default all
        (all numeric columns for Parquet).
    header : bool, optional
        Whether a CSV/text file starts with a header line; default: detected for CSV (a first
        line with no numeric cell), no header for text.
    drop_nonfinite : bool
        Skip rows holding NaN/inf (counted in ``Source.dropped``) instead of failing.
    """
    if not os.path.isfile(path):
        raise DistgmmInputError(f"source {path} does not exist or is not a file; check the path.")
    fmt = format or _guess_format(path)
    if fmt not in SOURCE_FORMATS:
        raise DistgmmInputError(f"unknown source format {fmt!r}; use one of {', '.join(SOURCE_FORMATS)}.")
    if os.path.getsize(path) == 0:
        raise DistgmmInputError(f"{path}: the file is empty; check that it is the right file.")
    if fmt in ("text", "csv"):
        return DelimitedSource(path, csv_format=fmt == "csv", columns=columns, header=header,
                               drop_nonfinite=drop_nonfinite)
    if header is not None:
        raise DistgmmInputError(f"--header/--no-header only apply to text and CSV, not {fmt}.")
    if fmt == "npy":
        return NpySource(path, columns=columns, drop_nonfinite=drop_nonfinite)
    return ParquetSource(path, columns=columns, drop_nonfinite=drop_nonfinite)

"""Delimited text files with a header line (CSV, RecBole atomic files).

The happy path is one :func:`pyarrow.csv.read_csv` call on bytes already in
memory. Only when Arrow rejects the file, or a cheap check after reading looks
suspicious, does :meth:`DelimitedText.scan` walk the lines in Python to find the
first bad line and raise a :class:`DataError` that names it.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.compute as pc

from recsys.utils.errors import DataError

_NUMBER = r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|infinity)"
#: What Arrow accepts for a float cell (empty = null is handled separately).
_FLOAT_RE = re.compile(rf"\s*{_NUMBER}\s*", re.IGNORECASE)
_FLOAT_SEQ_RE = re.compile(rf"\s*(?:{_NUMBER}(?:\s+{_NUMBER})*)?\s*", re.IGNORECASE)
_KIND_RE = {"float": _FLOAT_RE, "float_seq": _FLOAT_SEQ_RE}
_KIND_TEXT = {"float": "a float", "float_seq": "space-separated floats"}


#: The UTF-8 byte-order mark some editors (Excel, Notepad) write at the start of a file.
UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")


def read_file_bytes(path: Path) -> bytes:
    """Whole file as bytes, without a leading UTF-8 byte-order mark (else the first
    header field would be ``\\ufeffuser_id``); missing, directory, 0-byte and
    UTF-16/32 files are errors."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a directory, expected a file")
    data = path.read_bytes()
    if not data:
        raise DataError(path, "empty file (0 bytes)")
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
        if not data:
            raise DataError(path, "empty file (only a UTF-8 byte-order mark)")
    elif data.startswith(_UTF16_32_BOMS):
        raise DataError(path, "starts with a UTF-16/UTF-32 byte-order mark: save the file as UTF-8", line=1)
    return data


def check_trailing_newline(path: Path, data: bytes, detail: str = "") -> None:
    """A file that does not end with a newline was cut off while being written."""
    if not data.endswith(b"\n"):
        n = data.count(b"\n") + 1
        raise DataError(path, f"truncated last line {n} (no trailing newline){detail}", line=n)


def _decode(path: Path, raw: bytes, line: int) -> str:
    """One line as text, without its line ending."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"invalid UTF-8 at byte {exc.start} of the line", line=line) from None
    return text[:-1] if text.endswith("\r") else text


def _has_line_break(table: pa.Table) -> bool:
    """Whether a (quoted) string cell spans lines, which would shift line numbers."""
    return any(
        pc.any(pc.match_substring_regex(col, "[\r\n]")).as_py()
        for col in table.columns
        if pa.types.is_string(col.type)
    )


class DelimitedText:
    """A headered delimited text file held in memory.

    Args:
        path: the file (for messages).
        data: its bytes (non-empty).
        delimiter: field separator.
        quoting: whether ``"`` quotes fields (CSV) or is a plain character (TSV).
    """

    def __init__(self, path: Path, data: bytes, delimiter: str, quoting: bool) -> None:
        self.path = path
        self.data = data
        self.delimiter = delimiter
        self.quoting = quoting
        first, _, _ = data.partition(b"\n")
        self.header: list[str] = self.split(_decode(path, first, 1))
        self.n_fields = len(self.header)

    # ------------------------------------------------------------------ lines
    def split(self, line: str) -> list[str]:
        """Fields of one line (quotes honoured for CSV)."""
        if not self.quoting:
            return line.split(self.delimiter)
        return next(csv.reader([line], delimiter=self.delimiter), [])

    def check_unique_names(self, names: list[str]) -> None:
        """Duplicate field names in the header are an error."""
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise DataError(self.path, "duplicate field name in header", line=1, column=name)
            seen.add(name)

    def check_rows(self) -> None:
        """At least one data row, and a complete last line."""
        body = self.data.partition(b"\n")[2]
        if not body.strip():
            raise DataError(self.path, "no data rows (header only)", line=1)
        if not self.data.endswith(b"\n"):
            last = self.data.rpartition(b"\n")[2]
            got = len(self.split(_decode(self.path, last, self.data.count(b"\n") + 1)))
            detail = f": expected {self.n_fields} fields, got {got}" if got < self.n_fields else ""
            check_trailing_newline(self.path, self.data, detail)

    # ------------------------------------------------------------------- scan
    def scan(self, kinds: Mapping[str, str], names: list[str]) -> None:
        """Walk every line and raise on the first structural or typed-cell problem.

        Args:
            kinds: ``{field name: "float" | "float_seq"}`` cells to check.
            names: the field names, in header order.
        """
        checks = [(i, names[i], _KIND_RE[kinds[n]], kinds[n]) for i, n in enumerate(names) if n in kinds]
        lines = self.data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        for lineno, raw in enumerate(lines[1:], start=2):
            fields = self._line_fields(raw, lineno)
            for i, name, regex, kind in checks:
                cell = fields[i]
                if cell != "" and not regex.fullmatch(cell):
                    what = f"expected {_KIND_TEXT[kind]}, got {cell!r}"
                    raise DataError(self.path, what, line=lineno, column=name)

    def _line_fields(self, raw: bytes, lineno: int) -> list[str]:
        text = _decode(self.path, raw, lineno)
        if text == "":
            raise DataError(self.path, f"blank line (expected {self.n_fields} fields)", line=lineno)
        if self.quoting and text.count('"') % 2 and (text.startswith('"') or self.delimiter + '"' in text):
            what = "unterminated quoted field (line breaks inside values are not supported)"
            raise DataError(self.path, what, line=lineno)
        fields = self.split(text)
        if fields == self.header:
            raise DataError(self.path, f"duplicate header at line {lineno}", line=lineno)
        if len(fields) != self.n_fields:
            raise DataError(
                self.path, f"expected {self.n_fields} fields, got {len(fields)}", line=lineno
            )
        return fields

    # ------------------------------------------------------------------- read
    def read(
        self,
        names: list[str],
        include: list[str],
        types: Mapping[str, pa.DataType],
        kinds: Mapping[str, str],
    ) -> pa.Table:
        """Parse with Arrow; on failure, scan for the exact line.

        Args:
            names: clean field names, one per header field.
            include: fields to return.
            types: explicit Arrow types (others are inferred).
            kinds: numeric kinds per field, for the fallback scan.
        """
        if b"\n\n" in self.data or b"\n\r\n" in self.data:
            self.scan(kinds, names)  # blank line: Arrow would read it as a row of nulls
        try:
            table = pacsv.read_csv(
                pa.BufferReader(self.data),
                read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
                parse_options=pacsv.ParseOptions(
                    delimiter=self.delimiter,
                    quote_char='"' if self.quoting else False,
                    ignore_empty_lines=False,
                ),
                convert_options=pacsv.ConvertOptions(
                    include_columns=include,
                    column_types=dict(types),
                    null_values=[""],
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            self.scan(kinds, names)
            raise DataError(self.path, f"unreadable: {exc}") from None
        if self.quoting and b'"' in self.data and _has_line_break(table):
            self.scan(kinds, names)
        return table

    def check_no_repeated_header(self, table: pa.Table, names: list[str], name: str) -> None:
        """A header line inside the data shows up as a cell equal to its header field."""
        col = table.column(name)
        if pa.types.is_string(col.type) and pc.any(pc.equal(col, self.header[names.index(name)])).as_py():
            self.scan({}, names)

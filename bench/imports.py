"""Read the label files other tools write, as :class:`~bench.schema.Description` lists.

Formats (``read_labels(path, format)``; ``FORMATS`` has the details):

=================  ===========================================================================
``netdissect-lite``  NetDissect-Lite ``tally.csv``: ``unit,category,label,score`` then per category
                   ``<cat>-label,-truth,-activation,-intersect,-iou``. ``unit`` is **1-based**;
                   labels carry Broden's category suffix (``sky-s``, ``red-c``).
``netdissect``     The original NetDissect's result CSV (its ``plot/<model>.csv``,
                   ``<layer>-result.csv``): the same columns, also 1-based.
``compexp``        compexp ``tally_<layer>.csv``: ``unit`` (0-based), ``category``, ``label`` (a
                   formula such as ``((water OR river) AND (NOT blue-c))``), ``score``, ``length``,
                   ..., ``category_noncomp``, ``label_noncomp``, ``score_noncomp``.
``milan``          MILAN's descriptions CSV: ``layer,unit,description`` (0-based).
``clip-dissect``   CLIP-Dissect ``descriptions.csv``: ``layer,unit,description[,similarity]``.
``dnd``            Describe-and-Dissect ``final_results.csv``: ``Neuron ID,Label 1,Label 2,Label 3``
                   (``Label 1`` is the chosen label), or ``Neuron ID,label`` for the fc layer.
=================  ===========================================================================

Conversions, so imported labels compare with the harness's own methods:

* units become 0-based :class:`~bench.schema.UnitRef` (NetDissect's ``unit - 1``);
* NetDissect labels lose the Broden suffix of their category (``park-s`` -> ``park``), as the
  harness's NetDissect reports them; the raw label stays in ``extras["raw_label"]``;
* compexp formulas are parsed (names may contain spaces), leaf suffixes ``-s``/``-c``/``-t``
  removed (the set MILAN's baseline strips), and rendered as the harness's CompExp renders them
  (``(water OR river) AND NOT blue``), with the JSON tree in ``extras["formula"]``;
* formats without a layer column (NetDissect, compexp, DnD) take ``layer=``; compexp and the
  original NetDissect's ``<layer>-result.csv`` fall back to the layer in the file name, and any
  of them to a per-layer name such as DnD's ``resnet152_imagenet_layer3.csv`` (``layer3``) or
  ``..._fc.csv`` (:func:`layer_in_file_name`). For formats with a layer column, ``layer=`` keeps
  that layer's rows only.

A malformed file is a :class:`~bench.errors.DataError` naming the file, the line and the columns
expected.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import DataError, FormulaError, UnknownNameError, UsageError
from bench.formula import parse_compexp, to_json
from bench.schema import Description, UnitRef

__all__ = [
    "FORMATS",
    "ImportedLabels",
    "LabelFormat",
    "detect_format",
    "format_names",
    "import_labels",
    "layer_in_file_name",
    "milan_normalise_formula",
    "parse_compexp_formula",
    "read_labels",
    "strip_broden_suffix",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class LabelFormat:
    """One label-file format: who writes it, which columns, how units count."""

    name: str
    tool: str
    file: str
    columns: tuple[str, ...]
    unit_base: int
    has_layer_column: bool
    description: str


FORMATS: dict[str, LabelFormat] = {
    f.name: f
    for f in (
        LabelFormat(
            name="netdissect-lite",
            tool="NetDissect-Lite",
            file="tally.csv",
            columns=("unit", "category", "label", "score", "<category>-label", "..."),
            unit_base=1,
            has_layer_column=False,
            description="best concept per unit with IoU; 1-based units; Broden suffixes",
        ),
        LabelFormat(
            name="netdissect",
            tool="NetDissect (original)",
            file="plot/<model>.csv or <layer>-result.csv",
            columns=("unit", "category", "label", "score", "<category>-label", "..."),
            unit_base=1,
            has_layer_column=False,
            description="same columns as NetDissect-Lite; 1-based units",
        ),
        LabelFormat(
            name="compexp",
            tool="compexp",
            file="tally_<layer>.csv",
            columns=("unit", "category", "label", "score", "length", "..."),
            unit_base=0,
            has_layer_column=False,
            description="a logical formula of concepts per unit with IoU",
        ),
        LabelFormat(
            name="milan",
            tool="MILAN",
            file="descriptions CSV",
            columns=("layer", "unit", "description"),
            unit_base=0,
            has_layer_column=True,
            description="free-text description per unit",
        ),
        LabelFormat(
            name="clip-dissect",
            tool="CLIP-Dissect",
            file="descriptions.csv",
            columns=("layer", "unit", "description", "similarity (optional)"),
            unit_base=0,
            has_layer_column=True,
            description="best concept word per unit with its soft-WPMI similarity",
        ),
        LabelFormat(
            name="dnd",
            tool="Describe-and-Dissect",
            file="final_results.csv",
            columns=("Neuron ID", "Label 1", "Label 2", "Label 3"),
            unit_base=0,
            has_layer_column=False,
            description="three candidate labels per unit, Label 1 chosen (fc: Neuron ID,label)",
        ),
    )
}

_REQUIRED: dict[str, tuple[str, ...]] = {
    "netdissect-lite": ("unit", "category", "label", "score"),
    "netdissect": ("unit", "category", "label", "score"),
    "compexp": ("unit", "label", "score"),
    "milan": ("layer", "unit", "description"),
    "clip-dissect": ("layer", "unit", "description"),
    "dnd": ("neuron id",),
}

#: Broden category suffixes that MILAN's compexp baseline strips (scene, texture, colour).
_FORMULA_SUFFIX = re.compile(r"-[stc]$")


@dataclass(frozen=True, kw_only=True, slots=True)
class ImportedLabels:
    """Descriptions read from one file, with where they came from."""

    format: str
    path: str
    sha256: str
    layer: str | None
    descriptions: tuple[Description, ...] = field(default_factory=tuple)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.unit.layer for d in self.descriptions))

    def provenance(self) -> dict[str, Any]:
        """JSON for a results file: format, file name, digest, layer argument, unit count."""
        return {
            "format": self.format,
            "tool": FORMATS[self.format].tool,
            "file": Path(self.path).name,
            "sha256": self.sha256,
            "layer": self.layer,
            "units": len(self.descriptions),
        }


# --- public entry points ------------------------------------------------------------------------


def read_labels(
    path: str | Path, format: str = "auto", *, layer: str | None = None
) -> list[Description]:
    """Descriptions of every unit in ``path``; see the module docstring for the formats."""
    return list(import_labels(path, format, layer=layer).descriptions)


def import_labels(
    path: str | Path, format: str = "auto", *, layer: str | None = None
) -> ImportedLabels:
    """Like :func:`read_labels`, with the file's digest and format for provenance."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(
            f"Expected a label file at {p}, found {'a directory' if p.is_dir() else 'nothing'}."
        )
    if layer is not None and (not isinstance(layer, str) or not layer.strip()):
        raise UsageError(f"Expected a non-empty layer name, got {layer!r}.")
    table = _read_table(p)
    fmt = format
    if fmt == "auto":
        detected = _detect(table.columns)
        if detected is None:
            raise DataError(
                f"{p}: could not tell the format from its header {table.header}. Pass one of "
                f"{', '.join(FORMATS)} explicitly."
            )
        fmt = detected
    elif fmt not in FORMATS:
        raise UnknownNameError("label format", fmt, [*FORMATS, "auto"])
    _require_columns(table, fmt)
    parser = _PARSERS[fmt]
    descriptions = parser(table, layer)
    if not descriptions:
        where = f" for layer {layer!r}" if layer is not None else ""
        raise DataError(f"{p}: expected at least one unit{where}, found none.")
    return ImportedLabels(
        format=fmt,
        path=str(p),
        sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
        layer=layer,
        descriptions=tuple(descriptions),
    )


def detect_format(path: str | Path) -> str | None:
    """The format whose columns the file's header has, or ``None``.

    NetDissect-Lite and the original NetDissect share their columns (and parse alike); the
    answer for both is ``"netdissect-lite"``. MILAN and CLIP-Dissect files without a
    ``similarity`` column are ``"milan"``.
    """
    return _detect(_read_table(Path(path).expanduser(), header_only=True).columns)


# --- label text ---------------------------------------------------------------------------------


def strip_broden_suffix(name: str, category: str | None) -> str:
    """``name`` without Broden's ``-<first letter of category>`` suffix (``park-s`` -> ``park``).

    Only the suffix of ``category`` is removed, so ``plastic-opaque`` (material) is kept whole.
    """
    name = name.strip()
    if not category:
        return name
    suffix = f"-{category.strip()[:1].lower()}"
    if name.endswith(suffix) and len(name) > len(suffix):
        return name[: -len(suffix)]
    return name


def _strip_formula_suffix(name: str) -> str:
    name = " ".join(name.split())
    if _FORMULA_SUFFIX.search(name) and len(name) > 2:
        return name[:-2]
    return name


def parse_compexp_formula(
    text: str, *, clean: Callable[[str], str] = _strip_formula_suffix
) -> list[Any]:
    """The JSON tree (``["leaf", name]``, ``["not", F]``, ``["and"|"or", F, G]``) of a formula as
    compexp writes it: ``((water OR river) AND (NOT blue-c))``.

    Read by :func:`bench.formula.parse_compexp`: names are runs of words between operators and
    parentheses (``pool table``); ``clean`` maps each (default: drop a ``-s``/``-c``/``-t``
    suffix). Raises :class:`~bench.errors.FormulaError` (a ``ValueError``).
    """
    return to_json(parse_compexp(text, clean=clean))


def milan_normalise_formula(text: str) -> str:
    """A compexp label as MILAN's baseline scored it: lower-case, no parentheses, ``-``/``_`` as
    spaces, Broden category suffixes removed (``water or river and not blue``)."""
    t = text.lower().replace("(", " ").replace(")", " ")
    t = re.sub(r"\W+(s|t|c)($|\W+)", " ", t)
    t = t.replace("-", " ").replace("_", " ")
    return " ".join(t.split())


# --- CSV reading --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Table:
    path: Path
    header: list[str]
    #: lower-cased, stripped column name -> index (first occurrence)
    columns: dict[str, int]
    #: (line number, fields), blank lines skipped
    rows: list[tuple[int, list[str]]]


def _one_line(path: Path, start: int, end: int) -> None:
    """A label file's record is one line: a quoted field over several lines is a quote left
    open (it would merge the following lines into one label)."""
    if end > start:
        raise DataError(
            f"{path}: line {start}: a quoted field runs on to line {end}; expected one record per "
            "line. Close the quote on its line (or remove the stray quote)."
        )


def _read_table(path: Path, *, header_only: bool = False) -> _Table:
    if not path.is_file():
        raise DataError(f"Expected a label file at {path}, found nothing there.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            # strict: a quote left open to the end of the file is an error, not one label
            # that swallows every later line.
            reader = csv.reader(f, strict=True)
            start = 1
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: expected a CSV header line, got an empty file.")
            _one_line(path, start, reader.line_num)
            rows: list[tuple[int, list[str]]] = []
            if not header_only:
                while True:
                    start = reader.line_num + 1
                    fields = next(reader, None)
                    if fields is None:
                        break
                    _one_line(path, start, reader.line_num)
                    if not fields or all(not x.strip() for x in fields):
                        continue
                    rows.append((reader.line_num, fields))
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: expected a UTF-8 text CSV file, got undecodable bytes at offset {e.start}."
        ) from e
    except csv.Error as e:
        raise DataError(
            f"{path}: line {start}: not a readable CSV record ({e}); a quote opened on line "
            f'{start} is never closed. Close it ("...") or remove the stray quote.'
        ) from e
    columns: dict[str, int] = {}
    for i, name in enumerate(header):
        columns.setdefault(name.strip().lower(), i)
    return _Table(path=path, header=[h.strip() for h in header], columns=columns, rows=rows)


def _detect(columns: dict[str, int]) -> str | None:
    names = set(columns)
    if "neuron id" in names:
        return "dnd"
    if {"unit", "label", "score"} <= names:
        if "length" in names or "label_noncomp" in names:
            return "compexp"
        if "category" in names and any(n.endswith("-iou") for n in names):
            return "netdissect-lite"
        return None
    if {"layer", "unit", "description"} <= names:
        return "clip-dissect" if "similarity" in names else "milan"
    return None


def _require_columns(table: _Table, fmt: str) -> None:
    missing = [c for c in _REQUIRED[fmt] if c not in table.columns]
    if fmt == "dnd" and not missing and not ({"label 1", "label"} & set(table.columns)):
        missing = ["Label 1 (or label)"]
    if missing:
        info = FORMATS[fmt]
        detected = _detect(table.columns)
        hint = (
            f" It looks like a '{detected}' file: pass format='{detected}'."
            if detected and detected != fmt
            else ""
        )
        raise DataError(
            f"{table.path}: line 1: expected the columns {', '.join(info.columns)} of a "
            f"{info.tool} {info.file} file; missing {', '.join(missing)} in the header "
            f"{','.join(table.header)}.{hint}"
        )


class _Row:
    """Field access by column name, with errors that name the file, line and column."""

    __slots__ = ("fields", "line", "table")

    def __init__(self, table: _Table, line: int, fields: list[str]):
        self.table = table
        self.line = line
        self.fields = fields

    def fail(self, message: str) -> DataError:
        return DataError(f"{self.table.path}: line {self.line}: {message}")

    def has(self, column: str) -> bool:
        return column in self.table.columns

    def text(self, column: str) -> str:
        return self.fields[self.table.columns[column]].strip()

    def unit(self, column: str, base: int) -> int:
        raw = self.text(column)
        try:
            value = float(raw)
            ok = math.isfinite(value) and value == int(value)
        except ValueError:
            ok = False
        if not ok:
            raise self.fail(f"expected an integer in column '{column}', got {raw!r}.")
        n = int(value)
        if n < base:
            hint = (
                " This format numbers units from 1; a 0 suggests a 0-based file of another format."
                if base == 1
                else ""
            )
            raise self.fail(
                f"expected a unit number >= {base} in column '{column}', got {n}.{hint}"
            )
        return n - base

    def number(self, column: str) -> float | None:
        if not self.has(column):
            return None
        raw = self.text(column)
        if raw == "" or raw.lower() in ("nan", "none", "null"):
            return None
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(f"expected a number in column '{column}', got {raw!r}.") from None
        return value if math.isfinite(value) else None


def _rows(table: _Table) -> Iterator[_Row]:
    width = len(table.header)
    for line, fields in table.rows:
        if len(fields) < width:
            raise DataError(
                f"{table.path}: line {line}: expected {width} columns "
                f"({','.join(table.header)}), got {len(fields)}."
            )
        if len(fields) > width and any(x.strip() for x in fields[width:]):
            raise DataError(
                f"{table.path}: line {line}: expected {width} columns "
                f"({','.join(table.header)}), got {len(fields)} with values past the last one."
            )
        yield _Row(table, line, fields)


class _Collector:
    """Descriptions by unit, rejecting duplicates, in file order of layers then unit index."""

    def __init__(self, table: _Table):
        self.table = table
        self.items: dict[UnitRef, tuple[int, Description]] = {}
        self.layer_order: dict[str, int] = {}

    def add(self, line: int, d: Description) -> None:
        if d.unit in self.items:
            first = self.items[d.unit][0]
            raise DataError(
                f"{self.table.path}: line {line}: unit {d.unit.index} of layer "
                f"'{d.unit.layer}' (0-based) appears again; first at line {first}."
            )
        self.layer_order.setdefault(d.unit.layer, len(self.layer_order))
        self.items[d.unit] = (line, d)

    def result(self) -> list[Description]:
        keys = sorted(self.items, key=lambda u: (self.layer_order[u.layer], u.index))
        return [self.items[k][1] for k in keys]


def _layer_from_name(path: Path, pattern: str) -> str | None:
    m = re.fullmatch(pattern, path.name)
    return m.group(1) if m else None


#: A layer named in a per-layer file name: ``resnet152_imagenet_layer3.csv``,
#: ``BLIP2-Layer1.csv``, ``resnet50_imagenet_broden_fc.csv`` (DnD's published layouts).
_LAYER_IN_NAME = re.compile(r"(?:^|[_\-.])(layer\d+|fc|conv\d+)(?=[_\-.]|$)", re.IGNORECASE)


def layer_in_file_name(path: str | Path) -> str | None:
    """The layer a per-layer file's name states (``..._layer3.csv`` -> ``layer3``,
    ``..._fc.csv`` -> ``fc``), lower-cased; ``None`` when it names none or several."""
    stem = Path(path).name
    stem = stem[: -len(Path(stem).suffix)] if Path(stem).suffix else stem
    found = {m.group(1).lower() for m in _LAYER_IN_NAME.finditer(stem)}
    return found.pop() if len(found) == 1 else None


def _require_layer(table: _Table, fmt: str, layer: str | None, inferred: str | None) -> str:
    if layer is not None:
        return layer
    if inferred:
        return inferred
    from_name = layer_in_file_name(table.path)
    if from_name:
        return from_name
    raise UsageError(
        f"{table.path}: {FORMATS[fmt].tool} {FORMATS[fmt].file} files do not name the layer; "
        "pass layer=... (on the command line: --layer NAME)."
    )


def _status(label: str, row: _Row, column: str) -> dict[str, Any]:
    if label:
        return {}
    return {"status": "error", "error": f"line {row.line}: empty '{column}' in the file"}


# --- parsers ------------------------------------------------------------------------------------


def _netdissect(table: _Table, layer: str | None, fmt: str) -> list[Description]:
    inferred = _layer_from_name(table.path, r"(.+)-result\.csv") if fmt == "netdissect" else None
    layer_name = _require_layer(table, fmt, layer, inferred)
    categories = [
        name[: -len("-label")]
        for name in table.columns
        if name.endswith("-label") and f"{name[: -len('-label')]}-iou" in table.columns
    ]
    out = _Collector(table)
    for row in _rows(table):
        index = row.unit("unit", base=1)
        category = row.text("category")
        raw = row.text("label")
        label = strip_broden_suffix(raw, category)
        per_category: dict[str, Any] = {}
        for cat in categories:
            entry: dict[str, Any] = {
                "label": strip_broden_suffix(row.text(f"{cat}-label"), cat),
                "iou": row.number(f"{cat}-iou"),
            }
            for part in ("truth", "activation", "intersect"):
                if row.has(f"{cat}-{part}"):
                    entry[part] = row.number(f"{cat}-{part}")
            per_category[cat] = entry
        extras: dict[str, Any] = {
            "raw_label": raw,
            "category": category,
            "per_category": per_category,
            "source": {"format": fmt, "line": row.line, "unit_in_file": index + 1},
        }
        out.add(
            row.line,
            Description(
                unit=UnitRef(layer=layer_name, index=index),
                label=label,
                score=row.number("score"),
                score_name="iou",
                extras=extras,
                **_status(label, row, "label"),
            ),
        )
    return out.result()


def _compexp(table: _Table, layer: str | None) -> list[Description]:
    inferred = _layer_from_name(table.path, r"tally_(.+)\.csv")
    layer_name = _require_layer(table, "compexp", layer, inferred)
    out = _Collector(table)
    for row in _rows(table):
        index = row.unit("unit", base=0)
        raw = row.text("label")
        extras: dict[str, Any] = {
            "raw_label": raw,
            "source": {"format": "compexp", "line": row.line},
        }
        label = ""
        status: dict[str, Any] = _status(raw, row, "label")
        if raw:
            try:
                formula = parse_compexp(raw, clean=_strip_formula_suffix)
            except FormulaError as e:
                raise row.fail(
                    f"expected a compexp formula in column 'label' such as "
                    f"'((water OR river) AND (NOT blue-c))', got {raw!r}: {e}"
                ) from None
            label = formula.render()
            extras["formula"] = to_json(formula)
            extras["length"] = formula.length
            extras["plain"] = milan_normalise_formula(raw)
        if row.has("category"):
            extras["category"] = row.text("category")
        if row.has("length"):
            extras["length_in_file"] = row.number("length")
        if row.has("label_noncomp"):
            single = row.text("label_noncomp")
            extras["best_single"] = _strip_formula_suffix(single) if single else None
            extras["best_single_iou"] = row.number("score_noncomp")
            if row.has("category_noncomp"):
                extras["best_single_category"] = row.text("category_noncomp")
        out.add(
            row.line,
            Description(
                unit=UnitRef(layer=layer_name, index=index),
                label=label,
                score=row.number("score"),
                score_name="iou",
                extras=extras,
                **status,
            ),
        )
    return out.result()


def _layered(table: _Table, layer: str | None, fmt: str) -> list[Description]:
    out = _Collector(table)
    seen_layers: dict[str, None] = {}
    for row in _rows(table):
        row_layer = row.text("layer")
        if not row_layer:
            raise row.fail("expected a layer name in column 'layer', got an empty field.")
        seen_layers.setdefault(row_layer)
        if layer is not None and row_layer != layer:
            continue
        index = row.unit("unit", base=0)
        label = row.text("description")
        similarity = row.number("similarity") if fmt == "clip-dissect" else None
        out.add(
            row.line,
            Description(
                unit=UnitRef(layer=row_layer, index=index),
                label=label,
                score=similarity,
                score_name="similarity" if similarity is not None else None,
                extras={"source": {"format": fmt, "line": row.line}},
                **_status(label, row, "description"),
            ),
        )
    if layer is not None and not out.items:
        raise DataError(
            f"{table.path}: expected rows of layer {layer!r}, found none; the file has layers "
            f"{', '.join(seen_layers) or '(none)'}."
        )
    return out.result()


def _dnd(table: _Table, layer: str | None) -> list[Description]:
    layer_name = _require_layer(table, "dnd", layer, None)
    label_columns = [c for c in ("label 1", "label 2", "label 3") if c in table.columns]
    chosen = "label 1" if label_columns else "label"
    out = _Collector(table)
    for row in _rows(table):
        index = row.unit("neuron id", base=0)
        label = row.text(chosen)
        extras: dict[str, Any] = {"source": {"format": "dnd", "line": row.line}}
        if label_columns:
            extras["candidates"] = [row.text(c) for c in label_columns if row.text(c)]
        out.add(
            row.line,
            Description(
                unit=UnitRef(layer=layer_name, index=index),
                label=label,
                extras=extras,
                **_status(label, row, table.header[table.columns[chosen]]),
            ),
        )
    return out.result()


_PARSERS: dict[str, Callable[[_Table, str | None], list[Description]]] = {
    "netdissect-lite": lambda t, layer: _netdissect(t, layer, "netdissect-lite"),
    "netdissect": lambda t, layer: _netdissect(t, layer, "netdissect"),
    "compexp": _compexp,
    "milan": lambda t, layer: _layered(t, layer, "milan"),
    "clip-dissect": lambda t, layer: _layered(t, layer, "clip-dissect"),
    "dnd": _dnd,
}


def format_names() -> Sequence[str]:
    """Names accepted by ``read_labels(format=...)`` besides ``"auto"``."""
    return tuple(FORMATS)

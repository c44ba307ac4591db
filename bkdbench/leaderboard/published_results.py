"""The published results bkdbench ships (``bkdbench/leaderboard/published/*.yaml``): read, validated, flattened.

Each file is one table (``cifar-lt``, ``large-lt``): ``sources`` (class, citation, URL) and ``entries``,
one per cell: benchmark (dataset, imbalance factor or ``natural``, model, epochs), bkdbench's method
name, top-1 and many/medium/few where the source gives them, the source key and where in it the value
stands. Numbers are copied by hand; a cell whose number could not be found has no top-1 and a ``note``
saying so. ``not_comparable`` marks an entry whose protocol bkdbench does not reproduce (another
long-tailed file set). Validated strictly with pydantic (unknown keys, an unknown source key, a value
outside 0..100 are errors); no torch, no core registries (the results layer).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

HERE = Path(__file__).resolve().parent / "published"  # the shipped tables (data only)
SOURCE_CLASSES = ("original paper", "official repository", "third-party re-run", "aggregator")
COLUMNS = ["table", "dataset", "imbalance", "model", "epochs", "stage2_epochs", "method", "top1", "many", "medium",
           "few", "reported", "note", "not_comparable", "source", "source_class", "citation", "where", "url"]

Percent = Optional[float]


class PublishedError(ValueError):
    """A published table that cannot be read, or a name that is not one."""


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source_class: Literal[SOURCE_CLASSES] = Field(alias="class")
    citation: str = Field(min_length=10)
    url: str = Field(pattern=r"^https://")


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str
    imbalance: Union[float, Literal["natural"]]
    model: str
    epochs: Optional[int] = Field(None, gt=0)  # None: the source does not give the budget
    stage2_epochs: Optional[int] = Field(None, ge=0)  # a two-stage method's classifier stage
    method: str
    top1: Percent = Field(None, ge=0, le=100)
    many: Percent = Field(None, ge=0, le=100)
    medium: Percent = Field(None, ge=0, le=100)
    few: Percent = Field(None, ge=0, le=100)
    source: str
    table: Optional[str] = None  # where in the source (table, row)
    reported: Optional[str] = None  # the source's own words where top1 is derived (e.g. "error 30.12")
    note: Optional[str] = None
    not_comparable: Optional[str] = None

    @model_validator(mode="after")
    def _said_why_missing(self):
        if self.top1 is None and not self.note:
            raise ValueError("an entry without top1 must say why in `note`")
        return self


class Table(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    sources: dict[str, Source] = Field(min_length=1)
    entries: list[Entry] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_sources(self):
        for i, entry in enumerate(self.entries):
            if entry.source not in self.sources:
                raise ValueError(f"entries.{i}: unknown source {entry.source!r}; "
                                 f"sources are: {', '.join(self.sources)}")
        return self


def table_names(folder: Path = HERE) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_table(name: str, folder: Path = HERE) -> Table:
    """The validated table ``name``; PublishedError with one line otherwise."""
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise PublishedError(f"unknown published table {name!r}; choose one of: {', '.join(table_names(folder))}")
    try:
        raw = yaml.safe_load(path.read_text())
        table = Table.model_validate(raw)
    except yaml.YAMLError as exc:
        raise PublishedError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise PublishedError(f"{path}: {where}: {first['msg']}") from None
    if table.name != name:
        raise PublishedError(f"{path}: its name is {table.name!r}, not {name!r}")
    return table


def published_rows(names: Optional[list[str]] = None, folder: Path = HERE) -> pd.DataFrame:
    """Every entry of the named tables (default: all) as one frame with ``COLUMNS``; a source's class,
    citation and URL repeated on each of its entries, so a row is checkable on its own."""
    records = []
    for name in names or table_names(folder):
        table = load_table(name, folder)
        for entry in table.entries:
            source = table.sources[entry.source]
            record = entry.model_dump()
            record.update(table=name, source_class=source.source_class, citation=source.citation,
                          where=entry.table, url=source.url)
            records.append(record)
    frame = pd.DataFrame.from_records(records, columns=COLUMNS) if records else pd.DataFrame(columns=COLUMNS)
    return frame.astype({"epochs": "Int64", "stage2_epochs": "Int64"})


def select(frame: pd.DataFrame, dataset: Optional[str] = None, imbalance: Optional[Union[float, str]] = None,
           ) -> pd.DataFrame:
    """Entries of ``dataset`` and ``imbalance`` (a number, or ``natural``); PublishedError naming what
    there is when ``dataset`` has no entry at all."""
    if dataset is not None:
        if dataset not in set(frame["dataset"]):
            raise PublishedError(f"no published results for dataset {dataset!r}; datasets with some: "
                                 f"{', '.join(sorted(set(frame['dataset'])))}")
        frame = frame[frame["dataset"] == dataset]
    if imbalance is not None:
        frame = frame[frame["imbalance"].map(lambda v: same_imbalance(v, imbalance))]
    return frame.reset_index(drop=True)


def same_imbalance(published, ours) -> bool:
    """``natural`` matches a natural-profile set (whatever its own factor); numbers match to 1e-6."""
    if published == "natural" or ours == "natural":
        return published == ours or published == "natural"
    return abs(float(published) - float(ours)) < 1e-6

"""Taxonomy of the labels: genus, family, authorship, common names and GBIF id per species.

Sources, a later one's non-empty fields winning: the first word of a binomial label (the genus), the manifest
(LifeCLEF ``Genus``/``Family``, a ``genus``/``family`` CSV column), and an optional taxonomy CSV (``data.taxonomy``,
``--taxonomy FILE``: label, genus, family, authorship, common_names separated by ``;``, gbif). Genus and family
rankings are species probabilities summed per genus / family: what Pl@ntNet's ``otherResults`` and graft's answers
show beside the species.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from graft.data.records import ImageRecord
from graft.errors import DataError

TAXONOMY_COLUMNS = ("label", "genus", "family", "authorship", "common_names", "gbif")
_BINOMIAL = re.compile(r"^([A-Z][a-z-]+) [a-z-]+")  # "Acer campestre ..." -> genus Acer


@dataclass(frozen=True)
class Taxon:
    genus: str = ""
    family: str = ""
    authorship: str = ""
    common_names: tuple[str, ...] = ()
    gbif: str = ""


@dataclass
class Taxonomy:
    """``taxa[label]``: what is known of each label; labels without an entry are simply unknown above species."""

    taxa: dict[str, Taxon] = field(default_factory=dict)

    def of(self, label: str) -> Taxon:
        return self.taxa.get(label) or Taxon(genus=binomial_genus(label))

    def rank(self, probabilities: np.ndarray, labels: Sequence[str], level: str) -> list[tuple[str, float]]:
        """``level`` ("genus" or "family") names with the summed probability of their species, best first; empty
        when no label has that level."""
        totals: dict[str, float] = {}
        for label, probability in zip(labels, probabilities, strict=True):
            name = getattr(self.of(label), level)
            if name:
                totals[name] = totals.get(name, 0.0) + float(probability)
        return sorted(totals.items(), key=lambda item: (-item[1], item[0]))

    @classmethod
    def from_records(cls, records: Iterable[ImageRecord]) -> Taxonomy:
        taxa: dict[str, Taxon] = {}
        for record in records:
            known = taxa.get(record.label, Taxon(genus=binomial_genus(record.label)))
            taxa[record.label] = replace(known, genus=record.genus or known.genus, family=record.family or known.family)
        return cls(taxa)

    def updated(self, other: Taxonomy) -> Taxonomy:
        """This taxonomy with ``other``'s non-empty fields taking precedence (a taxonomy file over the manifest)."""
        taxa = dict(self.taxa)
        for label, taxon in other.taxa.items():
            known = taxa.get(label, Taxon())
            taxa[label] = Taxon(*(new or old for new, old in zip(astuple(taxon), astuple(known), strict=True)))
        return Taxonomy(taxa)

    def to_json(self) -> dict:
        return {label: asdict(taxon) for label, taxon in sorted(self.taxa.items())}

    @classmethod
    def from_json(cls, data: dict) -> Taxonomy:
        return cls({label: Taxon(values.get("genus", ""), values.get("family", ""), values.get("authorship", ""),
                                 tuple(values.get("common_names", ())), values.get("gbif", ""))
                    for label, values in data.items()})


def astuple(taxon: Taxon) -> tuple:
    return (taxon.genus, taxon.family, taxon.authorship, taxon.common_names, taxon.gbif)


def binomial_genus(label: str) -> str:
    """The genus of a binomial ("Acer campestre L." -> "Acer"); '' for labels that are not binomials."""
    match = _BINOMIAL.match(label.strip())
    return match.group(1) if match else ""


def read_taxonomy(path: str | Path) -> Taxonomy:
    """A taxonomy CSV (header: ``label`` and any of genus, family, authorship, common_names, gbif)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            if "label" not in header:
                raise DataError(f"{path}: line 1 has no 'label' column; the header needs label and any of "
                                f"{', '.join(TAXONOMY_COLUMNS[1:])}")
            taxa = {}
            for line, row in enumerate(reader, start=2):
                label = (row.get("label") or "").strip()
                if not label:
                    raise DataError(f"{path}: line {line} has an empty label; fill it or remove the line")
                names = tuple(n.strip() for n in (row.get("common_names") or "").split(";") if n.strip())
                taxa[label] = Taxon((row.get("genus") or "").strip(), (row.get("family") or "").strip(),
                                    (row.get("authorship") or "").strip(), names, (row.get("gbif") or "").strip())
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read the taxonomy ({error}); give a UTF-8 CSV with a label column") from error
    return Taxonomy(taxa)


def taxonomy_of(records: Iterable[ImageRecord], taxonomy_file: str | Path | None = None) -> Taxonomy:
    """What the records say of their labels, completed and corrected by ``taxonomy_file`` when given."""
    known = Taxonomy.from_records(records)
    return known.updated(read_taxonomy(taxonomy_file)) if taxonomy_file else known

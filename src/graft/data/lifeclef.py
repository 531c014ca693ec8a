"""LifeCLEF / ImageCLEF plant-task metadata: one XML file per image, in every year's schema.

  ImageCLEF 2011-2013   <Image> FileName, IndividualPlantId (the observation), Content, Author, a <Taxon> block
                        (Regnum ... Family, Genus, Species with author), ClassId = the species name; no MediaId,
                        no LearnTag: train and test are separate folders (``train/`` and ``test/`` are read as such)
  PlantCLEF 2014        MediaId, ObservationId, numeric ClassId, Species, Genus, Family, Content (or ViewContent),
                        Vote, Author, IndividualPlantId2013, ImageID2013; the image is ``<MediaId>.jpg``
  PlantCLEF 2015-2016   ObservationId, MediaId, Vote, Content, ClassId, Family, Genus, Species, Author,
                        ObservationId2014, ImageId2014, LearnTag
  PlantCLEF 2017        FileName, Species, Origin (eol, web), Author, Content, Genus, Family, ObservationId, MediaId,
                        YearInCLEF, LearnTag, ClassId

Rules: the observation is ObservationId, else IndividualPlantId, else the image alone; the label is the species
name when one is given (authorship dropped, spaces normalised, so every year names a species alike), else ClassId;
genus and family are kept; the user is the Author (every schema has one: S averages over users, so a record without
it is skipped and listed; an empty one is allowed); ``LearnTag=Test`` (or a ``test/`` folder) marks the test part.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

from graft.data.records import ImageRecord, Manifest, parse_vote, separate_mixed_observations

VIEW_TAGS = ("Content", "ViewContent", "View_Content", "Organ")
SCAN_TYPES = {"scan", "sheetasbackground", "pseudoscan"}  # 2011-2013 <Type>: a leaf on a sheet is a LeafScan
RANKS = {"subsp.", "ssp.", "var.", "f.", "subvar.", "cv."}


def schema_of(fields: dict[str, str]) -> str:
    """Which year's schema an XML file follows, from the elements it has."""
    if "IndividualPlantId" in fields and "MediaId" not in fields:
        return "ImageCLEF 2011-2013"
    if "IndividualPlantId2013" in fields or "ImageID2013" in fields:
        return "PlantCLEF 2014"
    if "ObservationId2014" in fields or "ImageId2014" in fields:
        return "PlantCLEF 2015-2016"
    if "Origin" in fields:
        return "PlantCLEF 2017"
    return "LifeCLEF plant task"


def species_label(name: str) -> str:
    """'Acer campestre L.' and 'Acer  campestre' -> 'Acer campestre'; infraspecific ranks are kept."""
    words = name.split()
    if len(words) < 2:
        return " ".join(words)
    kept = words[:2] if words[1] not in ("x", "\u00d7") else words[:3]  # a hybrid: 'Mentha x piperita'
    rest = words[len(kept):]
    while len(rest) >= 2 and rest[0] in RANKS:
        kept += rest[:2]
        rest = rest[2:]
    return " ".join(kept)


def read_lifeclef(directory: str | Path) -> Manifest:
    """A plant-task directory of ``*.xml`` beside the images, or one with ``train/`` and ``test/`` folders of them."""
    directory = Path(directory)
    parts = [(directory, "")]
    if not any(directory.glob("*.xml")):
        parts = [(directory / name, "test" if name == "test" else "") for name in ("train", "test")
                 if (directory / name).is_dir()]
    records, problems, schemas = [], [], Counter()
    for folder, split in parts:
        for xml_path in sorted(folder.glob("*.xml")):
            record, schema = _record(xml_path, split, problems)
            if record is not None:
                records.append(record)
                schemas[schema] += 1
    schema = " + ".join(f"{name} XML" for name, _ in schemas.most_common()) or "LifeCLEF plant task XML"
    return Manifest(separate_mixed_observations(records, problems), str(directory), problems, schema)


def _fields(root: ElementTree.Element) -> dict[str, str]:
    """Every leaf element's text by tag (nested blocks such as <Taxon> flattened; the first of a repeated tag)."""
    fields: dict[str, str] = {}
    for element in root.iter():
        if len(element) == 0:
            fields.setdefault(element.tag, " ".join((element.text or "").split()))
    return fields


def _record(xml_path: Path, split: str, problems: list[str]) -> tuple[ImageRecord | None, str]:
    try:
        fields = _fields(ElementTree.parse(xml_path).getroot())
    except ElementTree.ParseError as error:
        problems.append(f"{xml_path}: malformed XML ({error}); image skipped")
        return None, ""
    schema = schema_of(fields)
    image = _image_file(xml_path, fields)
    label = species_label(fields.get("Species", "")) or fields.get("ClassId", "")
    if image is None or not label or "Author" not in fields:
        missing = [what for what, ok in (("<FileName> or <MediaId>", image is not None),
                                         ("<Species> or <ClassId>", bool(label)),
                                         ("<Author>", "Author" in fields)) if not ok]
        problems.append(f"{xml_path}: no {' and no '.join(missing)} ({schema} schema); image skipped")
        return None, schema
    if not image.is_file():
        problems.append(f"{xml_path}: the image {image.name} is not beside the XML; image skipped")
        return None, schema
    observation = fields.get("ObservationId") or fields.get("IndividualPlantId") or f"{xml_path.stem}:{image.name}"
    if fields.get("LearnTag", "").lower() == "test":
        split = "test"
    view = next((fields[tag] for tag in VIEW_TAGS if fields.get(tag)), "")
    if fields.get("Type", "").lower() in SCAN_TYPES and view.lower() in ("leaf", ""):
        view = "LeafScan"
    vote = parse_vote(fields.get("Vote", ""), f"{xml_path} <Vote>", problems)
    genus = fields.get("Genus") or (label.split()[0] if " " in label else "")
    record = ImageRecord(image, label, observation, fields.get("Author", ""), _view_name(view), vote, split, genus,
                         fields.get("Family", ""))
    return record, schema


def _image_file(xml_path: Path, fields: dict[str, str]) -> Path | None:
    if fields.get("FileName"):
        return xml_path.parent / fields["FileName"]
    if fields.get("MediaId"):
        return xml_path.parent / f"{fields['MediaId']}.jpg"
    return None


def _view_name(view: str) -> str:
    """'leaf' -> 'Leaf', 'Leaf Scan' -> 'LeafScan': the view names graft's per-view preprocessing knows."""
    return re.sub(r"\s+", "", view[:1].upper() + view[1:]) if view else ""

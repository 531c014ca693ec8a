"""Every PlantCLEF / ImageCLEF plant-task metadata schema, and Hugging Face imagefolder: one small directory each."""

import json

import pytest

from conftest import make_image
from graft.data.lifeclef import species_label
from graft.data.manifest import load_manifest


def xml(**fields) -> str:
    def element(tag, value):
        if isinstance(value, dict):
            return f"<{tag}>" + "".join(element(k, v) for k, v in value.items()) + f"</{tag}>"
        return f"<{tag}>{value}</{tag}>"

    return '<?xml version="1.0" encoding="UTF-8"?><Image>' + "".join(element(k, v) for k, v in fields.items()) + \
        "</Image>"


def write(folder, name, **fields):
    make_image(folder / name, (30, 120, 40), len(name))
    (folder / f"{name.rsplit('.', 1)[0]}.xml").write_text(xml(**fields))


def test_imageclef_2011_2013_individual_plant_taxon_block_and_split_folders(tmp_path):
    taxon = {"Regnum": "Plantae", "Class": "Magnoliopsida", "Family": "Sapindaceae", "Genus": "Acer",
             "Species": "Acer campestre L."}
    for split, plant in (("train", "12"), ("test", "13")):
        write(tmp_path / split, f"{plant}.jpg", FileName=f"{plant}.jpg", Date="2012", Type="SheetAsBackground",
              Author="ann", Organization="Tela", Content="Leaf", IndividualPlantId=plant, Taxon=taxon,
              ClassId="Acer campestre L.", VernacularNames="Field maple", Locality="Montpellier",
              GPSLocality={"Longitude": "3.8", "Latitude": "43.6"})
    manifest = load_manifest(tmp_path)
    assert manifest.schema == "ImageCLEF 2011-2013 XML"
    records = sorted(manifest, key=lambda r: r.split)
    assert [(r.label, r.observation, r.user, r.split, r.genus, r.family) for r in records] == [
        ("Acer campestre", "12", "ann", "", "Acer", "Sapindaceae"),
        ("Acer campestre", "13", "ann", "test", "Acer", "Sapindaceae")]
    assert {r.view for r in records} == {"LeafScan"}  # a leaf on a sheet: graft's LeafScan preprocessing


def test_plantclef_2014_media_id_names_the_image(tmp_path):
    write(tmp_path, "7.jpg", MediaId="7", ObservationId="3", ClassId="2301", Species="Quercus ilex",
          Genus="Quercus", Family="Fagaceae", ViewContent="Fruit", Vote="4", Author="bob", Date="2013",
          Location="Cazouls", Latitude="43.4", Longitude="3.1", Year="ImageCLEF2013", IndividualPlantId2013="88",
          ImageID2013="999")
    manifest = load_manifest(tmp_path)
    record = manifest.records[0]
    assert manifest.schema == "PlantCLEF 2014 XML"
    assert (record.path.name, record.label, record.observation, record.view, record.vote, record.family) == (
        "7.jpg", "Quercus ilex", "3", "Fruit", 4.0, "Fagaceae")


def test_plantclef_2015_2016_learn_tag_marks_the_test_part(tmp_path):
    for media, tag in (("1", "Train"), ("2", "Test")):
        write(tmp_path, f"{media}.jpg", ObservationId="9", MediaId=media, Vote="3", Content="Flower", ClassId="30",
              Family="Rosaceae", Genus="Rosa", Species="Rosa canina L.", Author="cy", Date="2014", Location="x",
              Latitude="1", Longitude="2", YearInCLEF="PlantCLEF2015", ObservationId2014="5", ImageId2014="6",
              LearnTag=tag)
    manifest = load_manifest(tmp_path)
    assert manifest.schema == "PlantCLEF 2015-2016 XML"
    assert sorted((r.path.name, r.split, r.label) for r in manifest) == [("1.jpg", "", "Rosa canina"),
                                                                         ("2.jpg", "test", "Rosa canina")]


def test_plantclef_2017_web_images_without_observation_stand_alone(tmp_path):
    write(tmp_path, "a.jpg", FileName="a.jpg", Species="Bellis perennis", Origin="web", Author="dan",
          Content="Flower", Genus="Bellis", Family="Asteraceae", MediaId="11", YearInCLEF="PlantCLEF2017",
          LearnTag="Train", ClassId="5")
    write(tmp_path, "b.jpg", FileName="b.jpg", Species="", Origin="eol", Author="eve", Content="Leaf",
          MediaId="12", YearInCLEF="PlantCLEF2017", LearnTag="Train", ClassId="6")
    manifest = load_manifest(tmp_path)
    assert manifest.schema == "PlantCLEF 2017 XML"
    by_name = {r.path.name: r for r in manifest}
    assert by_name["a.jpg"].observation != by_name["b.jpg"].observation  # no ObservationId: each image alone
    assert (by_name["a.jpg"].label, by_name["b.jpg"].label) == ("Bellis perennis", "6")  # no species: the ClassId


@pytest.mark.parametrize("name, expected", [
    ("Acer campestre L.", "Acer campestre"), ("Acer  campestre", "Acer campestre"),
    ("Rosa canina subsp. dumalis (Bechst.) Rouy", "Rosa canina subsp. dumalis"),
    ("Mentha x piperita L.", "Mentha x piperita"), ("Acer", "Acer")])
def test_species_names_are_normalised_across_years(name, expected):
    assert species_label(name) == expected


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_hugging_face_imagefolder_metadata(tmp_path, kind):
    for split, label, name in (("train", "oak", "a.png"), ("train", "elm", "b.png"), ("test", "oak", "c.png")):
        make_image(tmp_path / split / label / name, (1, 2, 3), len(name))
    for split, rows in (("train", [("oak/a.png", "p1"), ("elm/b.png", "p2")]), ("test", [("oak/c.png", "p3")])):
        if kind == "csv":
            text = "file_name,observation,user\n" + "".join(f"{f},{o},u\n" for f, o in rows)
        else:
            text = "".join(json.dumps({"file_name": f, "observation": o, "user": "u"}) + "\n" for f, o in rows)
        (tmp_path / split / f"metadata.{kind}").write_text(text)
    manifest = load_manifest(tmp_path)
    assert manifest.schema == f"Hugging Face imagefolder (metadata.{kind})"
    assert sorted((r.path.name, r.label, r.observation, r.split) for r in manifest) == [
        ("a.png", "oak", "p1", "train"), ("b.png", "elm", "p2", "train"), ("c.png", "oak", "p3", "test")]


def test_inspect_says_which_schema_it_recognised(tmp_path):
    from typer.testing import CliRunner

    from graft.cli import app

    write(tmp_path, "7.jpg", MediaId="7", ObservationId="3", ClassId="2301", Species="Quercus ilex", Author="bob",
          Content="Leaf", IndividualPlantId2013="88")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path), "--no-decode"])
    assert "read as PlantCLEF 2014 XML" in " ".join(result.output.split())

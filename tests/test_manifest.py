import pytest

from conftest import make_image, shared_dataset
from graft.data.manifest import load_manifest, read_csv, read_lifeclef
from graft.errors import DataError

XML = """<?xml version="1.0" encoding="UTF-8"?>
<Image><ObservationId>{obs}</ObservationId><FileName>{name}</FileName><MediaId>1</MediaId><Content>Leaf</Content>
<ClassId>7</ClassId><Species>{species}</Species><Author>ann</Author>{extra}<Unused>x</Unused></Image>"""


def test_folder_reader_labels_by_folder_and_lists_non_images(folder_data):
    (folder_data / "red" / "readme.txt").write_text("hi")
    manifest = load_manifest(folder_data)
    assert manifest.labels == ["blue", "green", "red"] and len(manifest) == 24
    assert len({r.observation for r in manifest}) == 24  # every image its own observation
    assert any("readme.txt" in p for p in manifest.problems)


def test_csv_reader_maps_columns_and_lists_bad_rows_with_line_numbers(tmp_path):
    make_image(tmp_path / "img" / "a.png", (1, 2, 3), 0)
    make_image(tmp_path / "img" / "b.png", (1, 2, 3), 1)
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("file,species,plant,vote\nimg/a.png,oak,p1,3\nimg/missing.png,oak,p2,\n,elm,p3,\nimg/b.png,elm,p4,x\n")
    manifest = read_csv(csv_path, {"path": "file", "label": "species", "observation": "plant"})
    assert [(r.label, r.observation, r.vote) for r in manifest] == [("oak", "p1", 3.0), ("elm", "p4", None)]
    problems = "\n".join(manifest.problems)
    assert "list.csv:3" in problems and "missing.png" in problems
    assert "list.csv:4" in problems and "empty required" in problems
    assert "list.csv:5" in problems and "vote" in problems


def test_csv_without_required_column_names_it(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("file,name\nx.png,oak\n")
    with pytest.raises(DataError, match=r"bad\.csv.*path.*--column"):
        read_csv(csv_path)


def test_lifeclef_reader_fields_test_tag_and_bad_xml(tmp_path):
    make_image(tmp_path / "1.jpg", (9, 9, 9), 0)
    make_image(tmp_path / "2.jpg", (9, 9, 9), 1)
    (tmp_path / "1.xml").write_text(XML.format(obs=5, name="1.jpg", species="Acer rubrum",
                                               extra="<Vote>2</Vote><LearnTag>Test</LearnTag>"))
    (tmp_path / "2.xml").write_text(XML.format(obs=5, name="2.jpg", species="Acer rubrum", extra="")
                                    .replace("<Author>ann</Author>", ""))
    (tmp_path / "3.xml").write_text("<Image><broken>")
    manifest = read_lifeclef(tmp_path)
    assert len(manifest) == 1
    record = manifest.records[0]
    assert (record.label, record.observation, record.user, record.view, record.vote, record.split) == (
        "Acer rubrum", "5", "ann", "Leaf", 2.0, "test")
    problems = "\n".join(manifest.problems)
    assert "2.xml" in problems and "<Author>" in problems
    assert "3.xml" in problems and "malformed" in problems


def test_real_lifeclef_directory():
    manifest = load_manifest(shared_dataset("leafsnap-dev"))
    assert len(manifest) == 1148 and not manifest.problems
    assert sum(r.split == "test" for r in manifest) == 137
    assert {r.view for r in manifest} == {"Branch", "Flower", "Fruit", "Leaf", "Stem"}


def test_missing_dataset_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_manifest(tmp_path / "nope")


def test_a_csv_that_is_not_utf8_names_the_byte_and_the_fix(tmp_path):
    make_image(tmp_path / "a.png", (1, 2, 3), 0)
    (tmp_path / "list.csv").write_bytes("path,label\na.png,Érable\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"list\.csv: byte 17 \(line 2\).*save the file as UTF-8"):
        load_manifest(tmp_path / "list.csv")


def test_a_name_that_is_not_utf8_is_skipped_and_listed_at_read_time(folder_data):
    import os

    bad = os.fsdecode(bytes(folder_data / "red") + b"/caf\xe9.png")
    make_image(folder_data / "red" / "0.png", (200, 40, 40), 0)
    os.link(folder_data / "red" / "0.png", bad)
    manifest = load_manifest(folder_data)
    assert len(manifest) == 24 and any("not valid UTF-8" in p and "caf\\xe9" in p for p in manifest.problems)
    manifest.write_csv(folder_data / "manifest.csv")  # what fit writes at the end of a long run


def test_dangling_and_looping_links_are_listed_not_dropped(folder_data):
    (folder_data / "red" / "gone.png").symlink_to(folder_data / "nowhere.png")
    (folder_data / "red" / "loop.png").symlink_to(folder_data / "red" / "loop.png")
    manifest = load_manifest(folder_data)
    listed = "\n".join(manifest.problems)
    assert "gone.png" in listed and "loop.png" in listed and "symbolic link" in listed
    assert len(manifest) == 24


def test_csv_duplicates_count_once_and_an_image_under_two_labels_is_skipped(tmp_path):
    for name in ("a", "b", "c"):
        make_image(tmp_path / f"{name}.png", (1, 2, 3), 0)
    (tmp_path / "list.csv").write_text("path,label\na.png,oak\na.png,oak\nb.png,oak\nb.png,elm\nc.png,elm\n")
    manifest = read_csv(tmp_path / "list.csv")
    assert [(r.path.name, r.label) for r in manifest] == [("a.png", "oak"), ("c.png", "elm")]
    listed = "\n".join(manifest.problems)
    assert "more than once" in listed and "several labels ['elm', 'oak']" in listed

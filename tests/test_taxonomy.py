"""Taxonomy: genus from a binomial, then the manifest, then a taxonomy file; genus/family rankings sum species."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graft.data.records import ImageRecord
from graft.data.taxonomy import Taxon, Taxonomy, binomial_genus, read_taxonomy, taxonomy_of
from graft.errors import DataError
from graft.run import RunFiles, load_run
from graft.training.fit import fit


@pytest.mark.parametrize("label, genus", [("Acer campestre L.", "Acer"), ("Quercus ilex", "Quercus"),
                                          ("red", ""), ("class_3", ""), ("Acer", "")])
def test_genus_is_the_first_word_of_a_binomial(label, genus):
    assert binomial_genus(label) == genus


def test_a_taxonomy_file_completes_and_overrides_the_manifest(tmp_path):
    records = [ImageRecord(Path("a.jpg"), "Acer campestre", "o1", family="Aceraceae"),
               ImageRecord(Path("b.jpg"), "Rosa canina", "o2", genus="Rosa")]
    (tmp_path / "t.csv").write_text("label,family,authorship,common_names,gbif\n"
                                    "Acer campestre,Sapindaceae,L.,field maple; hedge maple,3189863\n")
    taxonomy = taxonomy_of(records, tmp_path / "t.csv")
    assert taxonomy.of("Acer campestre") == Taxon("Acer", "Sapindaceae", "L.", ("field maple", "hedge maple"),
                                                  "3189863")
    assert taxonomy.of("Rosa canina") == Taxon("Rosa")
    assert Taxonomy.from_json(taxonomy.to_json()) == taxonomy


@pytest.mark.parametrize("text, message", [("genus,family\nAcer,Sapindaceae\n", "line 1 has no 'label' column"),
                                           ("label,genus\nAcer campestre,Acer\n,Rosa\n", "line 3 has an empty label")])
def test_a_bad_taxonomy_file_names_the_line_and_the_fix(tmp_path, text, message):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_taxonomy(tmp_path / "t.csv")


def test_genera_and_families_rank_by_the_sum_of_their_species():
    taxonomy = Taxonomy({"a1": Taxon("A", "F"), "a2": Taxon("A", "F"), "b1": Taxon("B", "F"), "c": Taxon("C", "G")})
    probabilities, labels = np.array([0.25, 0.25, 0.375, 0.125]), ["a1", "a2", "b1", "c"]  # sums exact in binary
    assert taxonomy.rank(probabilities, labels, "genus") == [("A", 0.5), ("B", 0.375), ("C", 0.125)]
    assert taxonomy.rank(probabilities, labels, "family") == [("F", 0.875), ("G", 0.125)]
    assert Taxonomy().rank(probabilities, labels, "family") == []


def test_a_run_keeps_its_taxonomy_and_older_runs_get_their_manifests(folder_data, tiny_config, tmp_path):
    (tmp_path / "t.csv").write_text("label,genus,family\nred,Rubus,Rosaceae\n")
    fit(folder_data, tmp_path / "run", tiny_config.updated({"data.taxonomy": str(tmp_path / "t.csv")}))
    assert load_run(tmp_path / "run").taxonomy.of("red") == Taxon("Rubus", "Rosaceae")
    RunFiles(tmp_path / "run").taxonomy.unlink()  # a run written before taxonomy.json existed
    assert load_run(tmp_path / "run").taxonomy.of("red") == Taxon()

"""The settings explain themselves: every one has a one-line description (the rule and one reason), `graft config`
lists them, docs/configuration.md is its output, and the recipe ships as a config file."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from graft.cli import app
from graft.cli.data import settings_markdown
from graft.config import GraftConfig

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
MEASUREMENT = re.compile(r"leafsnap|seedlings|flavia|ELPV|bench/|README|seed 00|\d\.\d{3}")


def test_every_setting_has_a_short_description_that_quotes_no_measurement():
    for name, _, description in GraftConfig().reference():
        assert description, f"{name} has no description"
        assert len(description) <= 200, f"{name}: {len(description)} characters; keep the rule and one reason"
        assert not MEASUREMENT.search(description), f"{name} quotes a measurement: cite docs/decisions.md instead"


def test_graft_config_lists_every_setting_with_its_value():
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    for name, _, _ in GraftConfig().reference():
        assert f"{name} = " in result.output


def test_graft_config_shows_a_files_values_and_filters_by_name(tmp_path):
    (tmp_path / "c.yaml").write_text("head:\n  epochs: 7\n")
    result = runner.invoke(app, ["config", "head.epochs", "--config", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0 and "head.epochs = 7" in result.output and "head.width" not in result.output


def test_docs_configuration_is_graft_configs_markdown():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert settings_markdown(GraftConfig().reference()) in page, "regenerate: graft config --markdown"


def test_the_plant_recipe_is_a_config_file_fit_takes():
    recipe = GraftConfig.from_yaml(ROOT / "configs" / "plants.yaml")
    assert recipe.backbone.image_size == 320 and recipe.backbone.name == "tf_efficientnet_lite0"


def test_overrides_reach_any_depth():
    config = GraftConfig().updated({"finetune.augment.p": 0.5, "head.epochs": 40})
    assert config.finetune.augment.p == 0.5 and config.head.epochs == 40


def test_a_runs_config_keeps_the_settings_as_given_and_its_choices_under_resolved(folder_data, tiny_config, tmp_path):
    from graft.run import RunFiles, load_run
    from graft.training.fit import fit

    given = tiny_config.updated({"head.kind": "auto", "predict.fusion": "auto"})
    fit(folder_data, tmp_path / "run", given)
    written = GraftConfig.from_yaml(RunFiles(tmp_path / "run").config)
    assert written.head.kind == "auto" and written.predict.fusion == "auto"  # the inputs, as given
    assert written.resolved["head.kind"] in ("mlp", "linear") and written.resolved["predict.fusion"] != "auto"
    model = load_run(tmp_path / "run", "cpu")
    assert model.config.head.kind == written.resolved["head.kind"]  # the run computes with its choices
    again = fit(folder_data, tmp_path / "again", written)  # a run's config.yaml works as --config: settings only
    assert GraftConfig.from_yaml(RunFiles(again.run_dir).config).head.kind == "auto"

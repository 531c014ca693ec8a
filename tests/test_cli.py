import json
import subprocess
import sys

from typer.testing import CliRunner

from graft.cli import app

runner = CliRunner()


def write_config(tiny_config, tmp_path):
    path = tmp_path / "graft.yaml"
    path.write_text(tiny_config.to_yaml())
    return path


def test_fit_evaluate_predict_inspect(folder_data, tiny_config, tmp_path):
    config = write_config(tiny_config, tmp_path)
    result = runner.invoke(app, ["fit", str(folder_data), "--out", str(tmp_path / "run"), "--config", str(config), "-q"])
    assert result.exit_code == 0, result.output
    assert "Top-1" in result.output and "results.json" in result.output

    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), str(folder_data), "--json"])
    assert result.exit_code == 0, result.output
    assert {"S", "top1", "top3", "top5", "image_top1"} <= set(json.loads(result.output))

    image = str(next((folder_data / "blue").glob("*.png")))
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), image, "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["ranking"]) == 3

    result = runner.invoke(app, ["inspect", str(folder_data)])
    assert result.exit_code == 0 and "24 images" in result.output


def test_cli_flag_overrides_config(folder_data, tiny_config, tmp_path):
    config = write_config(tiny_config, tmp_path)
    args = ["fit", str(folder_data), "-o", str(tmp_path / "run"), "--config", str(config), "--width", "8", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    assert "width: 8" in (tmp_path / "run" / "config.yaml").read_text()


def test_errors_are_one_clear_line_with_exit_code_2(tmp_path):
    process = subprocess.run([sys.executable, "-m", "graft", "inspect", str(tmp_path / "missing")],
                             capture_output=True, text=True)
    assert process.returncode == 2
    assert "no such file or directory" in process.stderr and "Traceback" not in process.stderr


def test_help_everywhere():
    for command in ["fit", "evaluate", "predict", "inspect", "demo"]:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output

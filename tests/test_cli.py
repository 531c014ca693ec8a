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
    args = ["fit", str(folder_data), "-o", str(tmp_path / "run"), "--config", str(config), "--width", "8",
            "--repeats", "2", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    written = (tmp_path / "run" / "config.yaml").read_text()
    assert "width: 8" in written and "repeats: 2" in written


def test_errors_are_one_clear_line_with_exit_code_2(tmp_path):
    process = subprocess.run([sys.executable, "-m", "graft", "inspect", str(tmp_path / "missing")],
                             capture_output=True, text=True)
    assert process.returncode == 2
    assert "no such file or directory" in process.stderr and "Traceback" not in process.stderr


def test_help_everywhere():
    for command in ["fit", "evaluate", "predict", "inspect", "demo"]:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


# Usage mistakes (issue 15): the usage line, the reason, "Try 'graft X --help'", exit 2, never a traceback.
COMMANDS_WITH_ARGUMENTS = ["fit", "finetune", "evaluate", "predict", "inspect", "ensemble", "report", "serve",
                           "export", "preview-views"]


def usage_error(args: list[str]):
    result = runner.invoke(app, args, prog_name="graft")
    assert result.exit_code == 2, (args, result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.output


def test_every_command_names_its_missing_argument():
    for command in COMMANDS_WITH_ARGUMENTS:
        output = usage_error([command])
        assert "Missing argument" in output and f"graft {command} --help" in output, (command, output)


def test_every_command_refuses_an_unknown_option():
    for command in [*COMMANDS_WITH_ARGUMENTS, "demo"]:
        output = usage_error([command, "--bogus"])
        assert "No such option" in output and "--bogus" in output, (command, output)


def test_bad_option_values_are_named(tmp_path):
    cases = [
        (["fit", str(tmp_path), "--out", str(tmp_path / "r"), "--epochs", "abc"], "--epochs"),
        (["finetune", str(tmp_path), "--lr", "fast"], "--lr"),
        (["predict", str(tmp_path), "x.jpg", "--top", "many"], "--top"),
        (["serve", str(tmp_path), "--port", "http"], "--port"),
        (["preview-views", str(tmp_path), "--out", "s.png", "--per-view", "x"], "--per-view"),
    ]
    for args, option in cases:
        output = usage_error(args)
        assert "Invalid value" in output and option in output, (args, output)


def test_unknown_command_and_option_at_the_top():
    assert "No such command" in usage_error(["foo"])
    assert "No such option" in usage_error(["--nope"])


def test_version_and_no_arguments():
    result = runner.invoke(app, ["--version"], prog_name="graft")
    assert result.exit_code == 0 and result.output.strip() == "graft 0.1.0"
    verbose = runner.invoke(app, ["--version", "--verbose"], prog_name="graft")
    assert verbose.exit_code == 0 and "torch " in verbose.output and "onnxruntime " in verbose.output
    bare = runner.invoke(app, [], prog_name="graft")
    assert bare.exit_code == 0 and "Usage" in bare.output and "fit" in bare.output


def test_usage_errors_through_the_installed_entry_point_have_no_traceback():
    for args, reason in ((["foo"], "No such command"), (["fit"], "Missing argument"),
                         (["fit", ".", "--out", "r", "--epochs", "abc"], "Invalid value")):
        process = subprocess.run([sys.executable, "-m", "graft", *args], capture_output=True, text=True)
        assert process.returncode == 2, (args, process.stderr)
        assert reason in process.stderr and "Traceback" not in process.stderr + process.stdout
        assert "--help" in process.stderr


def test_the_command_line_loads_no_network_library_until_a_command_needs_one():
    # graft --help, --version and every usage error answer from typer alone: torch, timm and Lightning are ~9 s of
    # imports on a 2-core machine, loaded by the commands that run a network (fit, predict, serve...), not before.
    code = "import sys, graft.cli; print(sorted({'torch', 'timm', 'lightning', 'onnxruntime'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_predict_with_no_readable_image_is_one_line_and_exit_2_in_both_engines(folder_data, tiny_config, tmp_path):
    config = write_config(tiny_config, tmp_path)
    assert runner.invoke(app, ["fit", str(folder_data), "--out", str(tmp_path / "run"), "--config", str(config),
                               "-q"]).exit_code == 0
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert runner.invoke(app, ["export", str(tmp_path / "run")]).exit_code == 0
    for engine in ("torch", "onnx"):
        process = subprocess.run([sys.executable, "-m", "graft", "predict", str(tmp_path / "run"), str(broken),
                                  "--engine", engine, "--json"], capture_output=True, text=True)
        assert process.returncode == 2, (engine, process.stdout, process.stderr)
        assert "no readable image" in process.stderr and "Traceback" not in process.stderr, engine
        assert process.stdout == ""  # never an empty ranking that looks like an answer

"""One device per command (issue 35): resolved once from --device / the ``device`` setting; what it yields for torch,
Lightning and ONNX Runtime; an absent device is one line and exit 2, before any work. A fake CUDA (torch.cuda's
answers replaced) checks the GPU settings on this CPU host; tests/test_gpu.py runs the real thing where there is one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from graft import device as devices
from graft.cli import app
from graft.config import GraftConfig
from graft.device import CPU, Device, resolve_device
from graft.errors import ConfigError, DeviceError
from graft.features import engines
from graft.finetuning import finetune as finetune_module
from graft.finetuning.module import default_workers
from graft.training import lightning as lightning_module

HAS_GPU = torch.cuda.is_available() or torch.backends.mps.is_available()


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two bf16-capable CUDA GPUs, as torch would report them."""
    monkeypatch.setattr(devices, "_gpu_possible", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"Fake H200 #{index}")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_the_cpu_is_the_cpu_everywhere():
    cpu = resolve_device("cpu")
    assert cpu is CPU and cpu.accelerator == "cpu" and not cpu.is_gpu
    assert cpu.lightning_devices(3) == 3  # DDP processes on a CPU
    assert cpu.precision("auto") == "32-true" and cpu.precision("bf16-mixed") == "bf16-mixed"
    assert cpu.extraction_batch(None) == 32 and cpu.extraction_batch(8) == 8
    assert cpu.onnx_providers() == ["CPUExecutionProvider"]
    assert resolve_device(cpu) is cpu  # resolved once, passed down as it is


@pytest.mark.skipif(HAS_GPU, reason="on a host with a GPU, auto is that GPU (tests/test_gpu.py)")
def test_auto_without_a_gpu_is_the_cpu_and_loads_no_torch_to_find_out():
    assert resolve_device("auto") is CPU and resolve_device(None) is CPU
    code = "import sys; from graft.device import resolve_device; print(resolve_device('auto').spec, 'torch' in sys.modules)"
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert answer.split() == ["cpu", "False"]  # `graft predict` on an export stays torch-free


def test_cuda_yields_lightnings_accelerator_devices_and_bf16(fake_gpus):
    gpu = resolve_device("cuda")
    assert (gpu.type, gpu.index, gpu.count, gpu.name) == ("cuda", None, 2, "Fake H200 #0")
    assert gpu.accelerator == "cuda" and gpu.is_gpu and gpu.spec == "cuda"
    assert gpu.lightning_devices(2) == 2
    assert gpu.precision("auto") == "bf16-mixed" and gpu.precision("32-true") == "32-true"
    assert gpu.extraction_batch(None) == 256 and gpu.extraction_batch(16) == 16
    assert gpu.describe(2) == {"device": "cuda", "device_name": "Fake H200 #0", "device_count": 2}
    assert resolve_device("auto") == gpu  # a GPU before the CPU
    pinned = resolve_device("cuda:1")
    assert pinned.lightning_devices() == [1] and pinned.name == "Fake H200 #1" and pinned.spec == "cuda:1"
    with pytest.raises(DeviceError, match="pins one GPU"):
        pinned.lightning_devices(2)
    with pytest.raises(DeviceError, match=r"only 2 CUDA GPU\(s\)"):
        resolve_device("cuda:2")


def test_a_gpu_without_bf16_trains_in_float32(fake_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_device("cuda").precision("auto") == "32-true"


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cpu:1", "mps:0", "tpu"])
def test_a_device_that_is_no_device_is_refused_by_name(spec):
    with pytest.raises(DeviceError, match=r"unknown device|only CUDA devices take an index"):
        resolve_device(spec)
    with pytest.raises(ConfigError, match="unknown device"):
        GraftConfig().updated({"device": spec})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA GPU")
def test_an_absent_gpu_is_an_error_naming_the_fix():
    with pytest.raises(DeviceError, match=r"torch sees no CUDA GPU.*use --device cpu or auto"):
        resolve_device("cuda")


def test_onnx_runtime_takes_a_gpu_only_through_its_provider(fake_gpus, monkeypatch):
    import onnxruntime

    gpu, pinned = resolve_device("cuda"), resolve_device("cuda:1")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert gpu.onnx_providers() == ["CPUExecutionProvider"]
    assert engines.engine_for("auto", gpu) == "torch"  # ONNX Runtime would run on the CPU beside the GPU
    assert engines.engine_for("onnx", gpu) == "onnx" and engines.engine_for("torch", CPU) == "torch"
    assert engines.engine_for("auto", CPU) == "onnx"
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert pinned.onnx_providers() == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert engines.engine_for("auto", gpu) == "onnx"
    with pytest.raises(Exception, match="unknown feature engine"):
        engines.engine_for("tensorrt", gpu)


def test_trainers_run_on_the_resolved_device(fake_gpus, monkeypatch, tmp_path):
    made = {}
    monkeypatch.setattr(lightning_module.L, "Trainer", lambda **options: made.update(options) or options)
    lightning_module.make_trainer(tmp_path, "v", 1, [], False, resolve_device("cuda:1"))
    assert (made["accelerator"], made["devices"]) == ("cuda", [1])
    config = GraftConfig().updated({"finetune.devices": 2})
    files = finetune_module.RunFiles(tmp_path / "run")
    finetune_module._trainer(files, config, False, [], resolve_device("cuda"))
    assert (made["accelerator"], made["devices"], made["precision"], made["strategy"]) == ("cuda", 2, "bf16-mixed", "ddp")
    finetune_module._trainer(files, GraftConfig(), False, [], CPU)
    assert (made["accelerator"], made["devices"], made["precision"], made["strategy"]) == ("cpu", 1, "32-true", "auto")


def test_loader_workers_take_a_gpu_hosts_cores(monkeypatch):
    gpu = Device("cuda", None, "fake", 4, True)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers(gpu) == 15 and default_workers(gpu, processes=4) == 3
    assert default_workers(CPU) == 4  # on a CPU the workers compete with torch's threads
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_workers(CPU) == 0 and default_workers(gpu) == 1


def test_the_device_setting_is_read_at_any_depth_with_the_others():
    config = GraftConfig.from_dict({"device": "cpu", "finetune": {"augment": {"p": 0.5}}})
    assert config.device == "cpu"
    assert config.updated({"finetune.augment.p": 0.25, "device": "auto"}).finetune.augment.p == 0.25
    assert config.updated({"finetune.augment": {"zoom": 1.5}}).finetune.augment.p == 0.5  # a section merges
    assert "device" in config.dotted_keys() and "finetune.augment.p" in config.dotted_keys()


def test_results_record_the_device_that_did_the_work(folder_data, tiny_config, tmp_path):
    from graft.training.fit import fit

    fit(folder_data, tmp_path / "run", tiny_config.updated({"device": "cpu"}))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["device"] == "cpu" and results["device_count"] == 1
    assert results["device_name"] == CPU.name


RUNNER = CliRunner()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA GPU")
def test_every_command_that_runs_a_network_refuses_an_absent_gpu_before_any_work(folder_data, tmp_path):
    run = tmp_path / "run"
    commands = [["fit", str(folder_data), "--out", str(run)], ["extract", str(folder_data)],
                ["finetune", str(run)], ["evaluate", str(run), str(folder_data)],
                ["predict", str(run), "x.jpg"], ["report", str(run), "--out", str(tmp_path / "report")],
                ["serve", str(run)], ["demo", "--out", str(run)]]
    for command in commands:
        result = RUNNER.invoke(app, [*command, "--device", "cuda"])
        assert isinstance(result.exception, DeviceError), (command, result.output, result.exception)
    assert not run.exists() and not (tmp_path / "report").exists()
    # through the installed entry point: one line, exit 2, no traceback
    process = subprocess.run([sys.executable, "-m", "graft", "fit", str(folder_data), "--out", str(run),
                              "--device", "cuda"], capture_output=True, text=True)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert process.stderr.strip().startswith("error: --device cuda: torch sees no CUDA GPU")
    assert len(process.stderr.strip().splitlines()) == 1 and not run.exists()

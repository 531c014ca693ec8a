"""The GPU paths on a real CUDA device (issue 35): features a CPU cache can share, a fit whose choice is the CPU's,
fine-tuning whose kept model loads on a CPU, predict and serve on the GPU. Skipped where torch sees no CUDA GPU (CI
and this project's CPU hosts); bench/gpu.py measures the same paths' speed on a GPU host."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from graft.config import FeatureConfig
from graft.device import resolve_device
from graft.features import engines
from graft.features.backbones import create_backbone
from graft.features.extract import extract_features
from graft.finetuning.finetune import finetune
from graft.run import load_run
from graft.serving.inference import load_engine
from graft.training.fit import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here)")


def close(a: np.ndarray, b: np.ndarray, tolerance: float = 1e-4) -> bool:
    """Equal within the engines' tolerance, relative to the features' scale (random weights give large ones)."""
    return float(np.abs(a - b).max()) <= tolerance * max(1.0, float(np.abs(b).max()))


@pytest.fixture(autouse=True)
def fresh_sessions(monkeypatch):
    monkeypatch.setattr(engines, "_sessions", {})


def test_gpu_features_equal_the_cpus_within_the_engines_tolerance(tmp_path):
    backbone = create_backbone("tf_efficientnet_lite0", pretrained=False, channels_last=True)
    images = torch.randn(6, *backbone.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    on_cpu = engines.feature_engine(backbone, "onnx", tmp_path)(images)
    gpu = engines.feature_engine(backbone, "torch", tmp_path, resolve_device("cuda"))
    assert gpu.name == "torch" and backbone.device.type == "cuda"
    assert close(gpu(images), on_cpu)


def test_a_cache_filled_on_the_gpu_serves_a_cpu_fit(folder_data, tmp_path):
    paths = sorted(folder_data.rglob("*.png"))
    settings = FeatureConfig(cache_dir=str(tmp_path / "cache"), num_workers=2)
    on_gpu = extract_features(paths, create_backbone("test_efficientnet", pretrained=False, image_size=32), settings,
                              device=resolve_device("cuda"))
    again = extract_features(paths, create_backbone("test_efficientnet", pretrained=False, image_size=32), settings)
    assert on_gpu.extracted == len(paths) and again.extracted == 0
    fresh = extract_features(paths, create_backbone("test_efficientnet", pretrained=False, image_size=32),
                             settings.model_copy(update={"cache_dir": str(tmp_path / "cpu")}))
    assert close(on_gpu.features, fresh.features)


def test_a_fit_on_the_gpu_chooses_what_the_cpu_chooses(folder_data, tiny_config, tmp_path):
    results = {}
    for spec in ("cpu", "cuda"):
        fit(folder_data, tmp_path / spec, tiny_config.updated({"device": spec, "features.cache_dir": str(tmp_path / spec)}))
        results[spec] = json.loads((tmp_path / spec / "results.json").read_text())
    assert results["cuda"]["device"] == "cuda" and results["cuda"]["device_name"] == torch.cuda.get_device_name(0)
    assert results["cuda"]["head"] == results["cpu"]["head"]
    assert abs(results["cuda"]["S"] - results["cpu"]["S"]) <= 0.05


def test_fine_tuning_on_the_gpu_keeps_a_model_a_cpu_loads_and_predict_agrees(folder_data, tiny_config, tmp_path):
    run = tmp_path / "run"
    fit(folder_data, run, tiny_config.updated({"device": "cuda", "finetune.batch_size": 6}))
    result = finetune(run, {"finetune.epochs": 2, "device": "cuda", "finetune.lr": 0.05}, progress=False)
    assert result.finetuned["device"] == "cuda"
    image = sorted(folder_data.rglob("*.png"))[:2]
    on_cpu = load_run(run, "cpu")
    assert on_cpu.backbone.device.type == "cpu"
    cpu_answer = on_cpu.identify(image).to_json()
    gpu_model = load_engine(run, "torch", device="cuda")
    assert gpu_model.device.type == "cuda"
    gpu_answer = gpu_model.identify(image).to_json()
    assert [r["label"] for r in cpu_answer["ranking"]] == [r["label"] for r in gpu_answer["ranking"]]
    assert np.allclose([r["probability"] for r in cpu_answer["ranking"]],
                       [r["probability"] for r in gpu_answer["ranking"]], atol=1e-3)


def test_serving_on_the_gpu_answers(folder_data, tiny_config, tmp_path):
    from fastapi.testclient import TestClient

    from graft.serving.web import create_app

    fit(folder_data, tmp_path / "run", tiny_config)
    image = next(folder_data.rglob("*.png"))
    with TestClient(create_app(tmp_path / "run", "auto", device="cuda")) as client:
        for _ in range(600):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.1)
        assert client.get("/health").status_code == 200
        answer = client.post("/identify", files=[("files", (image.name, image.read_bytes(), "image/png"))])
    assert answer.status_code == 200 and answer.json()["ranking"] and answer.json()["engine"] == "torch"

"""Every backbone family through every stage (issue 36): timm's test_efficientnet (BatchNorm CNN), test_vit (class
token, fixed input size) and test_convnext (LayerNorm CNN), seeded random weights, at 224 and 320 px: extract -> fit
-> export -> predict (ONNX = torch) -> fine-tune a step -> serve. Then what loading must get right for each family:
a standard checkpoint saved by timm, pooling, a hub folder read offline, CLIP image towers."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import timm
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from graft.errors import BackboneError
from graft.features import engines
from graft.features.backbones import create_backbone
from graft.finetuning.finetune import finetune
from graft.finetuning.optimizers import family_optimizer, parameter_groups, plan
from graft.model.identification import identify
from graft.run import load_run
from graft.serving.inference import load_engine
from graft.serving.onnx import export_onnx
from graft.serving.web import create_app
from graft.training.fit import fit

FAMILIES = {"test_efficientnet": "sgd", "test_vit": "adamw", "test_convnext": "adamw"}


@pytest.fixture(autouse=True)
def fresh_sessions(monkeypatch):
    monkeypatch.setattr(engines, "_sessions", {})


def run_of(name: str, size: int, folder_data, tiny_config, tmp_path, **extra):
    config = tiny_config.updated({"backbone.name": name, "backbone.image_size": size, "finetune.batch_size": 6,
                                  "finetune.num_workers": 0, "device": "cpu", **extra})
    fit(folder_data, tmp_path / "run", config)
    return tmp_path / "run"


def onnx_logits_equal_torch(run, images: torch.Tensor) -> float:
    """Largest difference between the exported graph's logits and the run's own (backbone + head in torch)."""
    import onnxruntime

    model = load_run(run, "cpu")
    with torch.inference_mode():
        expected = model.head(model.backbone(images)).numpy()
    session = onnxruntime.InferenceSession(str(export_onnx(run)), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})[0]
    return float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("size", [224, 320])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_goes_through_every_stage(name, size, folder_data, tiny_config, tmp_path):
    run = run_of(name, size, folder_data, tiny_config, tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["backbone"] == name and 0 <= results["S"] <= 1
    described = json.loads((run / "backbone.json").read_text())
    assert described["data_config"]["input_size"] == [3, size, size]
    # predict before any export: the backbone's graph from the feature cache and the head in numpy, no torch
    photos = sorted(folder_data.rglob("*.png"))[:2]
    by_graph, by_torch = (identify(load_engine(run, engine, device="cpu"), photos) for engine in ("auto", "torch"))
    assert by_graph.engine == "onnx" and by_torch.engine == "torch"
    assert [r.label for r in by_graph.ranking] == [r.label for r in by_torch.ranking]
    # export: the graph computes what torch computes, and predict takes it
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    assert onnx_logits_equal_torch(run, images) < 1e-4
    by_export = identify(load_engine(run, "onnx", device="cpu"), photos)
    assert [r.label for r in by_export.ranking] == [r.label for r in by_torch.ranking]
    # fine-tune: one epoch with the family's optimizer; the run still loads and answers
    tuned = finetune(run, {"finetune.epochs": 1}, progress=False)
    assert tuned.finetuned["optimizer"]["kind"] == FAMILIES[name]
    assert load_run(run, "cpu").identify(photos).ranking
    # serve
    (run / "model.onnx").unlink()  # serve the run itself (torch), whichever model fine-tuning kept
    with TestClient(create_app(run, "auto", device="cpu")) as client:
        for _ in range(600):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        upload = [("files", (photos[0].name, photos[0].read_bytes(), "image/png"))]
        answer = client.post("/identify", files=upload)
        plantnet = client.post("/v2/identify/all", files=[("images", upload[0][1])], data={"organs": "auto"})
    assert answer.status_code == 200 and answer.json()["ranking"]
    assert plantnet.status_code == 200 and plantnet.json()["results"]  # the Pl@ntNet-compatible API


def test_a_standard_vit_checkpoint_loads_whole_at_any_size(tmp_path):
    source = timm.create_model("test_vit", pretrained=False, num_classes=10)  # class token, norm, a classifier head
    save_file(source.state_dict(), tmp_path / "vit.safetensors")
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    same = create_backbone("test_vit", weights=tmp_path / "vit.safetensors")
    assert same.pooling == "token" and torch.equal(same.model.norm.weight, source.norm.weight)
    assert same.identity == create_backbone("test_vit", weights=tmp_path / "vit.pth").identity
    images = torch.randn(2, 3, 160, 160)
    with torch.inference_mode():
        assert torch.allclose(same(images), source.forward_head(source.forward_features(images), pre_logits=True))
    larger = create_backbone("test_vit", weights=tmp_path / "vit.safetensors", image_size=320)  # embeddings resampled
    assert larger.model.pos_embed.shape[1] == 1 + (320 // 16) ** 2
    assert torch.equal(larger.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert larger(torch.randn(1, 3, 320, 320)).shape == (1, 64)
    averaged = create_backbone("test_vit", weights=tmp_path / "vit.pth", pooling="avg")  # its norm kept, before pooling
    assert averaged.pooling == "avg" and torch.equal(averaged.model.norm.weight, source.norm.weight)


def test_a_convnext_checkpoint_keeps_its_head_norm_and_a_wrong_one_is_one_line(tmp_path):
    source = timm.create_model("test_convnext", pretrained=False, num_classes=7)
    save_file(source.state_dict(), tmp_path / "convnext.safetensors")
    loaded = create_backbone("test_convnext", weights=tmp_path / "convnext.safetensors")
    assert torch.equal(loaded.model.head.norm.weight, source.head.norm.weight)  # head.norm is not the classifier
    with pytest.raises(BackboneError, match=r"do not match test_vit .*missing \['blocks") as refused:
        create_backbone("test_vit", weights=tmp_path / "convnext.safetensors")
    assert "\n" not in str(refused.value)


def test_pooling_is_the_families_own_unless_asked(tmp_path):
    assert create_backbone("test_vit", pretrained=False).pooling == "token"
    assert create_backbone("test_efficientnet", pretrained=False).pooling == "avg"
    assert create_backbone("test_convnext", pretrained=False, pooling="max").pooling == "max"
    with pytest.raises(BackboneError, match="token"):
        create_backbone("test_efficientnet", pretrained=False, pooling="token")
    with pytest.raises(BackboneError, match="not supported"):
        create_backbone("test_vit", pretrained=False, pooling="gem")


def test_a_hub_folder_loads_offline_through_timms_hub_path(tmp_path):
    from timm.models import save_for_hf

    source = timm.create_model("test_vit", pretrained=False, num_classes=10)
    save_for_hf(source, str(tmp_path / "hub"))  # config.json + model.safetensors, as on the Hugging Face hub
    backbone = create_backbone(f"local-dir:{tmp_path / 'hub'}")
    assert torch.equal(backbone.model.norm.weight, source.norm.weight)
    assert engines.graph_path(backbone, tmp_path).name.startswith("local-dir_")  # a file name, whatever the source


@pytest.fixture
def tiny_clip(tmp_path):
    """A tiny open_clip architecture, registered as open_clip registers its own configs."""
    open_clip = pytest.importorskip("open_clip")
    config = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16,
                                              "head_width": 32},
              "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-clip.json")
    return open_clip, config


def test_a_clip_image_tower_is_a_backbone_through_every_stage(tiny_clip, folder_data, tiny_config, tmp_path):
    backbone = create_backbone("open_clip:tiny-clip", pretrained=False, image_size=96)
    assert backbone.pooling == "embedding" and backbone.num_features == 32
    assert backbone.data_config["input_size"] == (3, 96, 96) and backbone.data_config["crop_pct"] == 1.0
    run = run_of("open_clip:tiny-clip", 64, folder_data, tiny_config, tmp_path)
    assert onnx_logits_equal_torch(run, torch.randn(2, 3, 64, 64)) < 1e-4
    photos = sorted(folder_data.rglob("*.png"))[:1]
    assert identify(load_engine(run, "onnx", device="cpu"), photos).ranking
    assert family_optimizer(load_run(run, "cpu").backbone.model) == "adamw"
    tuned = finetune(run, {"finetune.epochs": 1}, progress=False)
    assert tuned.finetuned["optimizer"]["kind"] == "adamw"
    (run / "model.onnx").unlink()
    with TestClient(create_app(run, "auto", device="cpu")) as client:
        for _ in range(600):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        answer = client.post("/v2/identify/all", files=[("images", (photos[0].name, photos[0].read_bytes()))])
    assert answer.status_code == 200 and answer.json()["results"]


def test_clip_weights_load_from_a_file_or_a_hub_folder_and_a_bare_name_asks_for_them(tiny_clip, tmp_path):
    open_clip, config = tiny_clip
    torch.manual_seed(5)
    source = open_clip.create_model("tiny-clip", pretrained=None)
    torch.save(source.state_dict(), tmp_path / "clip.pt")
    folder = tmp_path / "clip-hub"
    folder.mkdir()
    save_file(source.state_dict(), folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "resize_mode": "squash"}}))
    by_file = create_backbone("open_clip:tiny-clip", weights=tmp_path / "clip.pt")
    by_folder = create_backbone(f"open_clip:local-dir:{folder}")  # the path hf-hub:imageomics/bioclip takes
    assert by_file.identity == by_folder.identity
    assert torch.equal(by_folder.model.visual.conv1.weight, source.visual.conv1.weight)
    assert by_folder.data_config["crop_mode"] == "squash" and by_folder.data_config["mean"] == (0.5, 0.5, 0.5)
    with pytest.raises(BackboneError, match=r"names an architecture, not weights.*@openai"):
        create_backbone("open_clip:ViT-B-32")
    with pytest.raises(BackboneError, match="unknown open_clip model"):
        create_backbone("open_clip:no-such-clip")


def test_layernorm_families_fine_tune_with_adamw_layer_decay_and_warm_up(tmp_path):
    from graft.config import FineTuneConfig, HeadConfig
    from graft.finetuning.optimizers import WarmUp
    from graft.model.head import build_head

    vit = create_backbone("test_vit", pretrained=False).model
    head = build_head(64, 3, HeadConfig(kind="linear"))
    settings = plan(FineTuneConfig(), vit)
    assert (settings.kind, settings.lr, settings.weight_decay, settings.layer_decay) == ("adamw", 3e-5, 0.05, 0.75)
    groups = parameter_groups(vit, head, settings)
    first_block = next(g for g in groups[1:] if any(p is vit.blocks[0].attn.qkv.weight for p in g["params"]))
    last_block = next(g for g in groups[1:] if any(p is vit.blocks[-1].attn.qkv.weight for p in g["params"]))
    assert first_block["lr"] < last_block["lr"] <= groups[0]["lr"] == 3e-5  # lower layers move least
    norm_group = next(g for g in groups[1:] if any(p is vit.blocks[0].norm1.weight for p in g["params"]))
    assert norm_group["weight_decay"] == 0.0 and first_block["weight_decay"] == 0.05
    cnn = create_backbone("test_efficientnet", pretrained=False).model
    assert plan(FineTuneConfig(), cnn).kind == "sgd" and plan(FineTuneConfig(optimizer="adamw"), cnn).kind == "adamw"
    assert plan(FineTuneConfig(lr=1e-3), vit).lr == 1e-3  # a setting given wins over the family's default
    # warm-up: linear from base_lr / steps to base_lr over the first epoch's steps
    optimizer = torch.optim.AdamW(groups)
    trainer = type("T", (), {"num_training_batches": 4, "global_step": 0, "optimizers": [optimizer]})()
    seen = []
    for step in range(6):
        trainer.global_step = step
        WarmUp(1.0).on_train_batch_start(trainer, None, None, step)
        seen.append(optimizer.param_groups[0]["lr"])
    assert np.allclose(seen, [3e-5 * f for f in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)])


def test_graft_backbones_says_what_loads_offline_and_each_familys_defaults():
    from typer.testing import CliRunner

    from graft.cli import app
    from graft.features.catalog import catalog, describe

    rows = {row.name: row for row in catalog()}
    assert rows["tf_efficientnet_lite0"].weights == "offline" and rows["tf_efficientnet_lite0"].norm == "batchnorm"
    dinov2 = rows["vit_small_patch14_dinov2.lvd142m"]
    assert (dinov2.family, dinov2.pooling, dinov2.norm, dinov2.weights) == ("transformer", "token", "layernorm", "hub")
    assert describe("convnext_tiny.fb_in22k_ft_in1k").norm == "layernorm"  # read off the network, not its name
    assert rows["open_clip:hf-hub:imageomics/bioclip"].pooling == "embedding"
    result = CliRunner().invoke(app, ["backbones", "*efficientnet_lite*"])
    assert result.exit_code == 0 and "tf_efficientnet_lite2" in result.output and "sgd" in result.output
    assert CliRunner().invoke(app, ["backbones", "*no_such_net*"]).exit_code != 0

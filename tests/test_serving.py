import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import loaded, png, ready_client, shared_dataset
from graft.features import engines
from graft.features.preparation import view_names
from graft.serving.inference import GraphThenHead, load_engine
from graft.serving.onnx import export_onnx
from graft.serving.web import Limits, create_app
from graft.training.fit import fit


@pytest.fixture
def run(folder_data, tiny_config, tmp_path):
    fit(folder_data, tmp_path / "run", tiny_config)
    return tmp_path / "run"


@pytest.fixture
def graph_run(folder_data, tiny_config, tmp_path, monkeypatch):
    """A run fitted as in a new process: its backbone's graph is exported into its own cache (ONNX sessions are kept
    per process, so a fit after another test's would reuse that test's session and write no graph here)."""
    monkeypatch.setattr(engines, "_sessions", {})
    fit(folder_data, tmp_path / "run", tiny_config)
    return tmp_path / "run"


def test_identify_ranks_labels_for_an_observation(run):
    client = ready_client(create_app(run, "torch"))
    files = [("files", ("a.png", png(), "image/png")), ("files", ("b.png", png((190, 50, 40)), "image/png"))]
    answer = client.post("/identify?top_k=2", files=files, data={"views": ["Flower", "Leaf"]}).json()
    assert answer["ranking"][0]["label"] == "red" and len(answer["ranking"]) == 2
    assert len(answer["per_image"]) == 2 and answer["fusion"] == "mean" and answer["engine"] == "torch"
    assert client.get("/labels").json() == ["blue", "green", "red"]
    assert "Identify" in client.get("/").text and client.get("/openapi.json").status_code == 200


def test_health_is_503_until_the_model_is_loaded(run, monkeypatch):
    import graft.serving.inference

    original = graft.serving.inference.load_engine
    monkeypatch.setattr(graft.serving.inference, "load_engine", lambda *a: time.sleep(0.5) or original(*a))
    with TestClient(create_app(run, "torch")) as client:
        assert client.get("/health").status_code == 503
        assert client.post("/identify", files=[("files", ("a.png", png(), "image/png"))]).status_code == 503
        # the loading thread outlives the client: left running, its seeded test backbone (torch's global RNG) raced
        # the next test's fit, and a run then refused the backbone as different weights (1 run in ~10)
        loaded(client)


def test_bad_uploads_are_4xx_json_and_the_server_survives(run):
    client = ready_client(create_app(run, "torch", Limits(max_files=2, max_bytes=20_000, max_pixels=10_000)))
    cases = [
        ([], 400),  # no photos
        ([("files", ("x.txt", b"hello", "text/plain"))], 415),
        ([("files", ("empty.png", b"", "image/png"))], 400),
        ([("files", (f"{i}.png", png(), "image/png")) for i in range(3)], 413),  # too many
        ([("files", ("big.png", png(size=(200, 200)), "image/png"))], 413),  # too many pixels
        ([("files", ("noise.bmp", np.random.default_rng(0).bytes(30_000), "image/bmp"))], 413),  # too many bytes
    ]
    for files, status in cases:
        response = client.post("/identify", files=files) if files else client.post("/identify")
        assert response.status_code == status, (files[:1], response.text)
        assert "detail" in response.json()
    assert client.post("/identify", files=[("files", ("ok.png", png(), "image/png"))]).status_code == 200


def test_a_decompression_bomb_is_a_413_with_the_fix_and_the_server_survives(run):
    from conftest import png_header_only

    client = ready_client(create_app(run, "torch"))  # the default limits
    for side in (11_500, 16_000):
        response = client.post("/identify", files=[("files", ("bomb.png", png_header_only(side, side), "image/png"))])
        assert response.status_code == 413, response.text
        assert "replace or remove" in response.json()["detail"]
    assert client.post("/identify", files=[("files", ("ok.png", png(), "image/png"))]).status_code == 200


def test_onnx_and_torch_agree_on_real_images(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "_sessions", {})  # as in a new process: the fit exports the graph into its cache
    folders = sorted(p for p in shared_dataset("flavia").iterdir() if p.is_dir())[:2]
    for folder in folders:
        for path in sorted(folder.glob("*.jpg"))[:5]:
            target = tmp_path / "data" / folder.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    config = tiny_config.updated({"backbone.name": "tf_efficientnet_lite0", "backbone.pretrained": True,
                                  "backbone.image_size": 96})
    fit(tmp_path / "data", tmp_path / "run", config)
    images = [Image.open(p).convert("RGB") for p in sorted((tmp_path / "data").rglob("*.jpg"))[:4]]
    torch_engine, graph_engine = load_engine(tmp_path / "run", "torch"), load_engine(tmp_path / "run")
    export_onnx(tmp_path / "run")
    onnx_engine = load_engine(tmp_path / "run")
    assert isinstance(graph_engine.session, GraphThenHead) and onnx_engine.engine == "onnx"
    a = torch_engine.probabilities(images, [""] * 4)
    assert np.abs(a - onnx_engine.probabilities(images, [""] * 4)).max() < 1e-4
    assert np.abs(a - graph_engine.probabilities(images, [""] * 4)).max() < 1e-4


def test_predict_uses_the_onnx_export_and_agrees_with_torch(run, folder_data):

    from typer.testing import CliRunner

    from graft.cli import app

    image = str(next((folder_data / "green").glob("*.png")))
    torch_answer = json.loads(CliRunner().invoke(app, ["predict", str(run), image, "--json", "--engine", "torch"]).output)
    assert CliRunner().invoke(app, ["export", str(run)]).exit_code == 0
    onnx_answer = json.loads(CliRunner().invoke(app, ["predict", str(run), image, "--json"]).output)
    assert [r["label"] for r in onnx_answer["ranking"]] == [r["label"] for r in torch_answer["ranking"]]
    assert np.allclose([r["probability"] for r in onnx_answer["ranking"]],
                       [r["probability"] for r in torch_answer["ranking"]], atol=1e-4)


def test_onnx_and_torch_agree_with_test_time_views(run, folder_data):
    # the ONNX engine's numpy original goes through the same torch views as extraction's
    export_onnx(run)
    images = [Image.open(p).convert("RGB") for p in sorted(folder_data.rglob("*.png"))[:3]]
    torch_engine, onnx_engine = load_engine(run, "torch"), load_engine(run, "onnx")
    torch_engine.temperature = onnx_engine.temperature = 1000.0  # the tiny head saturates: unsaturated, views count
    answers = []
    for tta in (["hflip", "zoom"], []):
        names = view_names(tta)
        prepared = np.asarray(onnx_engine.preparation.batch(images, [""] * 3, names))
        assert prepared.shape[0] == 3 * len(names)
        np.testing.assert_array_equal(prepared, torch_engine.preparations[0][1].batch(images, [""] * 3, names))
        answers.append(onnx_engine.probabilities(images, [""] * 3, tta))
        np.testing.assert_allclose(answers[-1], torch_engine.probabilities(images, [""] * 3, tta), atol=1e-6)
    assert np.abs(answers[0] - answers[1]).max() > 1e-5


def test_a_run_not_exported_answers_from_its_backbones_cached_graph_and_its_head_in_numpy(graph_run, folder_data):
    run = graph_run
    images = [Image.open(p).convert("RGB") for p in sorted(folder_data.rglob("*.png"))[:3]]
    torch_engine, graph_engine = load_engine(run, "torch"), load_engine(run)
    assert torch_engine.engine == "torch" and isinstance(graph_engine.session, GraphThenHead)
    torch_engine.temperature = graph_engine.temperature = 1000.0  # the tiny head saturates: unsaturated, it counts
    np.testing.assert_allclose(graph_engine.probabilities(images, [""] * 3),
                               torch_engine.probabilities(images, [""] * 3), atol=1e-6)
    graphs = Path(graph_engine.config.features.cache_dir) / "graphs"
    shutil.rmtree(graphs)  # features extracted elsewhere, or under torch: the run itself answers
    assert load_engine(run).engine == "torch"


@pytest.mark.parametrize("exported", [True, False])
def test_predicting_with_an_onnx_export_or_a_cached_graph_loads_neither_torch_nor_timm(graph_run, folder_data,
                                                                                      exported):
    # the ONNX engine prepares the original view in PIL and numpy (graft.features.eval_transform), so `graft predict`
    # on an export answers without the ~6 s of importing torch, timm and torchvision; test-time views still use torch.
    # A run not exported does the same with its backbone's graph from the feature cache and its head in numpy.
    import subprocess
    import sys

    run = graph_run
    if exported:
        export_onnx(run)
    image = next((folder_data / "green").glob("*.png"))
    heavy = {"torch", "timm", "torchvision", "lightning", "fastapi", "skimage"}
    code = ("import json, sys; from graft.cli import app; "
            f"app(['predict', {str(run)!r}, {str(image)!r}, '--json'], standalone_mode=False); "
            f"print(json.dumps(sorted({heavy!r} & set(sys.modules))))")
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *answer, loaded = process.stdout.strip().splitlines()
    assert json.loads(loaded) == [] and json.loads("\n".join(answer))["engine"] == "onnx"


def test_an_oversized_body_is_refused_before_it_is_parsed_or_spooled(run, monkeypatch):
    import starlette.formparsers

    parsed = []
    original = starlette.formparsers.MultiPartParser.parse

    async def recording(self):
        parsed.append(1)
        return await original(self)

    monkeypatch.setattr(starlette.formparsers.MultiPartParser, "parse", recording)
    limits = Limits(max_files=2, max_bytes=20_000)
    client = ready_client(create_app(run, "torch", limits))
    big = [("files", (f"{i}.bin", b"\0" * 200_000, "image/png")) for i in range(2)]
    response = client.post("/identify", files=big)  # Content-Length tells: refused before any parsing
    assert response.status_code == 413 and "at most" in response.json()["detail"] and not parsed

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"\0" * 10_000

    headers = {"content-type": "multipart/form-data; boundary=x"}
    response = client.post("/identify", content=chunks(), headers=headers)
    assert response.status_code == 413 and "at most" in response.json()["detail"]
    assert client.post("/identify", files=[("files", ("ok.png", png(), "image/png"))]).status_code == 200


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_uploads_are_decoded_as_extraction_decodes_files(run, engine, monkeypatch):
    """Reduced JPEG decoding: a 12 MP upload is decoded at the DCT scale the backbone needs (32 px input -> 1/8)."""
    from graft.features import preparation

    if engine == "onnx":
        export_onnx(run)
    sizes = []
    original = preparation.decode_rgb

    def recording(*args, **kwargs):
        image = original(*args, **kwargs)
        sizes.append(image.size)
        return image

    monkeypatch.setattr(preparation, "decode_rgb", recording)
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000), (200, 40, 40)).save(buffer, "JPEG")
    client = ready_client(create_app(run, engine))
    answer = client.post("/identify", files=[("files", ("phone.jpg", buffer.getvalue(), "image/jpeg"))])
    assert answer.status_code == 200 and answer.json()["engine"] == engine
    assert sizes and all(size == (500, 375) for size in sizes)


def test_micro_batched_serving_answers_as_unbatched(run, folder_data):
    from concurrent.futures import ThreadPoolExecutor

    export_onnx(run)
    plain, batched = (load_engine(run, "onnx", window) for window in (0.0, 200.0))
    images = [Image.open(p).convert("RGB") for p in sorted(folder_data.rglob("*.png"))[:6]]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda image: batched.probabilities([image], [""]), images))
    for image, probabilities in zip(images, together, strict=True):
        np.testing.assert_allclose(probabilities, plain.probabilities([image], [""]), atol=1e-5)
    assert batched.batcher.forwards < len(images)

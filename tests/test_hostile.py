"""Hostile input: a run directory, a cache, a config or a request made by someone else. Each rule below held a defect
once (the issue's N-numbers): a hang, a traceback, a quietly wrong answer, or a file served that should not be."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi import Request
from safetensors.numpy import save_file
from typer.testing import CliRunner

from conftest import make_image, png, ready_client
from graft.cli import app as cli
from graft.config import GraftConfig
from graft.data.images import load_rgb
from graft.errors import ConfigError, DataError, GraftError, ImageError, RunError
from graft.features.cache_maintenance import cache_info, verify
from graft.run import RunFiles, fine_tuning, read_run_config
from graft.serving.gate import Gate, GateRules
from graft.serving.inference import load_engine
from graft.serving.keys import KeyRing
from graft.serving.web import create_app
from graft.store import ChunkStore, CorruptChunk
from graft.training.fit import fit, prepare_manifest

runner = CliRunner()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """One small run for the module; each test tampers with its own copy (:func:`run`)."""
    root = tmp_path_factory.mktemp("hostile")
    for index, (label, colour) in enumerate({"red": (200, 40, 40), "blue": (40, 60, 200)}.items()):
        for i in range(6):
            make_image(root / "data" / label / f"{i}.png", colour, seed=100 * index + i)
    config = GraftConfig.from_dict({
        "backbone": {"name": "test_efficientnet", "pretrained": False, "image_size": 32},
        "features": {"cache_dir": str(root / "cache"), "batch_size": 8, "num_workers": 0, "chunk_size": 8},
        "head": {"epochs": 3, "min_epochs": 1, "patience": 2, "width": 16, "repeats": 1, "kind": "linear"},
    })
    fit(root / "data", root / "run", config)
    return root / "run"


@pytest.fixture
def run(fitted, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(fitted, copy)
    return copy


def finishes(call, seconds: float = 10.0) -> BaseException | None:
    """Run ``call`` in a thread; fail the test if it is still running after ``seconds`` (a hang), else its error."""
    outcome: list = []

    def target():
        try:
            call()
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a hang"
    return outcome[0]


# -- files that are not files (N1) ------------------------------------------------------------------------------------

def test_a_fifo_named_like_a_photo_is_an_image_error_not_a_hang(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    error = finishes(lambda: load_rgb(fifo))
    assert isinstance(error, ImageError) and "FIFO" in str(error)


def test_a_device_named_as_a_config_is_refused_not_read_for_ever():
    error = finishes(lambda: GraftConfig.from_yaml("/dev/zero"))
    assert isinstance(error, ConfigError)


# -- configs (N11) ----------------------------------------------------------------------------------------------------

def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n"
        for i in range(8))
    (tmp_path / "bomb.yaml").write_text(bomb)
    error = finishes(lambda: GraftConfig.from_yaml(tmp_path / "bomb.yaml"), 5)
    assert isinstance(error, ConfigError) and "aliases" in str(error)


def test_a_binary_config_is_one_config_error(tmp_path):
    (tmp_path / "config.yaml").write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="UTF-8"):
        GraftConfig.from_yaml(tmp_path / "config.yaml")


# -- the feature cache (N12-N14) --------------------------------------------------------------------------------------

def cached(tmp_path, rows=None):
    store = ChunkStore(tmp_path / "store")
    rows = np.arange(12, dtype=np.float32).reshape(3, 4) if rows is None else rows
    store.add(["a", "b", "c"], rows)
    return store, next(store.directory.glob("*.npy"))


def test_a_flipped_byte_in_a_chunk_is_caught_on_first_read_and_by_verify(tmp_path):
    _, array = cached(tmp_path)
    data = bytearray(array.read_bytes())
    data[-3] ^= 0x40
    array.write_bytes(bytes(data))
    fresh = ChunkStore(array.parent)
    assert "a" in fresh  # shape is intact: only the digest knows
    with pytest.raises(CorruptChunk):
        fresh.get(["a"])
    assert "a" not in fresh  # left out: the rows are made again
    assert len(verify(tmp_path)) == 1


def test_swapped_keys_are_caught(tmp_path):
    _, array = cached(tmp_path)
    keys = array.with_suffix(".keys")
    lines = keys.read_text().split("\n")
    keys.write_text("\n".join([lines[0], lines[2], lines[1], lines[3]]))
    assert "digest" in verify(tmp_path)[0] or "SHA-256" in verify(tmp_path)[0]
    with pytest.raises(CorruptChunk):
        ChunkStore(array.parent).get(["b"])


def test_a_zero_length_chunk_is_reported_and_repaired_not_aborted(tmp_path):
    _, array = cached(tmp_path)
    array.write_bytes(b"")
    assert "a" not in ChunkStore(array.parent)  # structural check when indexed
    assert len(verify(tmp_path)) == 1
    assert verify(tmp_path, remove=True)[0].endswith("removed")
    assert verify(tmp_path) == []


def test_cache_info_counts_a_chunk_whose_keys_are_not_utf8(tmp_path):
    _, array = cached(tmp_path)
    array.with_suffix(".keys").write_bytes(b"\xff\xfe\x00")
    assert cache_info(tmp_path).unreadable == 1


def test_verify_refuses_a_cache_directory_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match="no such cache"):
        verify(tmp_path / "nowhere")


def test_a_damaged_chunk_is_extracted_again_and_fit_trains_on_the_true_rows(fitted, tmp_path):
    from graft.features.backbones import create_backbone
    from graft.features.extract import extract_features

    config = GraftConfig.from_yaml(RunFiles(fitted).config)
    paths = sorted((fitted.parent / "data" / "red").glob("*.png"))
    settings = config.features.model_copy(update={"cache_dir": str(tmp_path / "cache")})
    backbone = create_backbone(**config.backbone.model_dump())
    truth = extract_features(paths, backbone, settings).features
    for array in (tmp_path / "cache").rglob("*.npy"):
        array.write_bytes(array.read_bytes()[:-16] + bytes(16))  # zeroed rows: same size, same shape
    again = extract_features(paths, backbone, settings)
    assert again.extracted == len(paths)
    np.testing.assert_array_equal(again.features, truth)


# -- a run directory's files (N9, N10, N20) ---------------------------------------------------------------------------

TAMPERED = {
    "labels not a list": ("labels.json", b'{"a": 1}'),
    "labels duplicated": ("labels.json", b'["red", "red"]'),
    "labels binary": ("labels.json", bytes(range(256))),
    "negative temperature": ("calibration.json", b'{"temperature": -2.0}'),
    "zero temperature": ("calibration.json", b'{"temperature": 0}'),
    "NaN temperature": ("calibration.json", b'{"temperature": NaN}'),
    "temperature a string": ("calibration.json", b'{"temperature": "hot"}'),
    "backbone junk": ("backbone.json", b"[1, 2"),
    "crop_pct 0": ("backbone.json", None),
    "taxonomy wrong shape": ("taxonomy.json", b'{"red": ["Acer"]}'),
    "head junk": ("head.safetensors", b"\x00" * 64),
    "head NaN": ("head.safetensors", None),
    "config binary": ("config.yaml", bytes(range(256))),
}


def tamper(run: Path, case: str) -> None:
    name, data = TAMPERED[case]
    if case == "crop_pct 0":
        described = json.loads((run / name).read_text())
        described["data_config"]["crop_pct"] = 0
        data = json.dumps(described).encode()
    if case == "head NaN":
        from safetensors.numpy import load_file

        state = load_file(run / name)
        first = next(iter(state))
        state[first] = np.full_like(state[first], np.nan)
        save_file(state, str(run / name))
        return
    (run / name).write_bytes(data)


@pytest.mark.parametrize("case", sorted(TAMPERED))
@pytest.mark.parametrize("engine", ["torch", "auto"])
def test_a_tampered_run_file_is_one_error_naming_it_never_a_traceback_or_a_wrong_answer(run, case, engine):
    tamper(run, case)
    with pytest.raises(GraftError) as raised:
        load_engine(run, engine, device="cpu")
    assert TAMPERED[case][0] in str(raised.value) and "\n" not in str(raised.value).split(":", 1)[0]


def test_a_runs_config_cannot_choose_where_predict_writes(run, tmp_path):
    config = GraftConfig.from_yaml(RunFiles(run).config)
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (RunFiles(run).config).write_text(config.updated({"features.cache_dir": str(elsewhere)}).to_yaml())
    assert read_run_config(RunFiles(run)).features.cache_dir is None  # not a graft cache: the default is used
    real = config.features.cache_dir
    (RunFiles(run).config).write_text(config.to_yaml())
    assert read_run_config(RunFiles(run)).features.cache_dir == real  # an existing graft cache is kept


# -- the server (N3-N8, N22) ------------------------------------------------------------------------------------------

@pytest.fixture
def keyed(run, tmp_path):
    (tmp_path / "keys.txt").write_text("k1 5\n")
    return ready_client(create_app(run, "torch", keys=KeyRing.read(tmp_path / "keys.txt")))


def test_a_manifest_row_naming_a_secret_file_serves_nothing(run, tmp_path, keyed):
    secret = tmp_path / "secret.txt"
    secret.write_text("the server's keys")
    manifest = (run / "manifest.csv").read_text().splitlines()
    first = manifest[1].split(",")
    (run / "manifest.csv").write_text("\n".join([manifest[0], ",".join([str(secret), *first[1:]]), *manifest[2:]]))
    client = ready_client(create_app(run, "torch", keys=KeyRing.read(tmp_path / "keys.txt")))
    assert client.get("/v2/images/all/0/o").status_code == 401  # no key, no image
    answer = client.get("/v2/images/all/0/o", params={"api-key": "k1"})
    assert answer.status_code == 404 and b"keys" not in answer.content
    assert client.get("/v2/images/all/1/o", params={"api-key": "k1"}).status_code == 200  # a real training photo


@pytest.mark.parametrize("route", ["/labels", "/v2/images/all/0/o", "/v2/images/nope/0/o"])
def test_every_data_route_wants_the_key(keyed, route):
    assert keyed.get(route).status_code == 401
    assert keyed.get("/health").status_code == 200  # probes stay open


def test_an_unknown_project_is_404_not_500(keyed):
    assert keyed.get("/v2/images/nope/0/o", params={"api-key": "k1"}).status_code == 404


def test_a_request_without_a_key_is_refused_before_its_body_is_read(keyed):
    huge = {"content-length": str(10**12)}
    answer = keyed.post("/identify", headers=huge, content=b"x")
    assert answer.status_code == 401
    answer = keyed.post("/v2/identify/all", params={"api-key": "k1"}, headers=huge, content=b"x")
    assert answer.status_code == 413 and answer.json()["statusCode"] == 413


@pytest.mark.parametrize("value", ["²", "1" * 5000, "-1", "0", "1e3"])
def test_nb_results_must_be_ascii_digits(keyed, value):
    answer = keyed.post("/v2/identify/all", params={"api-key": "k1", "nb-results": value},
                        files=[("images", ("a.png", png(), "image/png"))])
    assert answer.status_code == 400, answer.text


@pytest.mark.parametrize("quota", ["²", "1" * 5000])
def test_a_quota_that_is_not_ascii_digits_is_a_config_error(tmp_path, quota):
    (tmp_path / "keys.txt").write_text(f"k1 {quota}\n")
    with pytest.raises(ConfigError, match="line 1"):
        KeyRing.read(tmp_path / "keys.txt")


def test_a_rejected_identification_costs_no_quota(run, tmp_path):
    config = GraftConfig.from_yaml(RunFiles(run).config)
    RunFiles(run).config.write_text(config.updated({"predict.reject_threshold": 0.9}).to_yaml())
    RunFiles(run).calibration.write_text('{"temperature": 1000}')  # flat probabilities: every answer is "unknown"
    (tmp_path / "keys.txt").write_text("k1 5\n")
    client = ready_client(create_app(run, "torch", keys=KeyRing.read(tmp_path / "keys.txt")))
    photo = [("images", ("a.png", png((120, 120, 120)), "image/png"))]
    assert client.post("/v2/identify/all", params={"api-key": "k1"}, files=photo).status_code == 404
    answer = client.post("/v2/identify/all", params={"api-key": "k1", "no-reject": "true"}, files=photo)
    assert answer.json()["remainingIdentificationRequests"] == 4


def through_gate(app, receive, rules: GateRules) -> list[dict]:
    """The ASGI messages ``app`` sends behind the gate for a JSON ``POST /identify`` whose body comes from
    ``receive``."""
    sent: list = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/identify", "raw_path": b"/identify", "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "root_path": "", "scheme": "http",
             "server": ("test", 80), "client": ("test", 1), "http_version": "1.1", "app": app}
    asyncio.run(asyncio.wait_for(Gate(app, rules)(scope, receive, send), 5))
    return sent


def test_a_stalled_body_is_answered_408_not_held_open():
    from fastapi import FastAPI

    async def stalls():
        await asyncio.sleep(3600)

    app = FastAPI()

    @app.post("/identify")
    async def identify(request_body: dict) -> dict:  # FastAPI reads the body through the gate's receive
        return request_body

    sent = through_gate(app, stalls, GateRules(None, 1000, idle_seconds=0.2, total_seconds=1))
    assert sent[0]["status"] == 408


# -- the command line (N17, N18, N2, N21, N15, N19) -------------------------------------------------------------------

@pytest.mark.parametrize("flags", [["--port", "70000"], ["--port", "-1"], ["--max-mb", "nan"], ["--max-mb", "0"],
                                   ["--max-files", "0"], ["--batch-window-ms", "inf"]])
def test_serve_refuses_bad_values_before_it_starts(run, flags):
    result = runner.invoke(cli, ["serve", str(run), *flags])
    assert result.exit_code == 2 or isinstance(result.exception, GraftError), result.output


def test_serve_refuses_a_missing_run_before_it_starts(tmp_path):
    result = runner.invoke(cli, ["serve", str(tmp_path / "nothing")])
    assert isinstance(result.exception, RunError) and "no such run directory" in str(result.exception)


@pytest.mark.parametrize("flags", [["--top", "-1"], ["--top", "0"], ["--fusion", "bogus"]])
def test_predict_refuses_bad_values(run, flags):
    image = next((run.parent / "run").glob("*.json"))  # any path: the values are refused first
    assert runner.invoke(cli, ["predict", str(run), str(image), *flags]).exit_code == 2


def test_fit_refuses_an_out_that_is_a_file(fitted, tmp_path):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(RunError, match="is a file"):
        fit(fitted.parent / "data", tmp_path / "out", GraftConfig.from_yaml(RunFiles(fitted).config))
    assert (tmp_path / "out").read_text() == "mine"


def test_evaluate_refuses_data_that_shares_no_label_with_the_run(run, tmp_path):
    from graft.evaluation.evaluate import evaluate

    for i in range(2):
        make_image(tmp_path / "other" / "violet" / f"{i}.png", (120, 0, 120), seed=i)
    with pytest.raises(DataError, match="none of its 2 images"):
        evaluate(run, tmp_path / "other", device="cpu")


def test_a_csv_field_past_the_csv_limit_names_its_line(tmp_path):
    from graft.data.manifest import read_csv

    (tmp_path / "data.csv").write_text("path,label\n" + "a.png,red\n" + "b.png," + "x" * 200_000 + "\n")
    with pytest.raises(DataError, match=r"data\.csv:3"):
        read_csv(tmp_path / "data.csv")


def test_the_same_bytes_under_two_labels_are_skipped_and_listed(fitted, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(fitted.parent / "data", data)
    shutil.copy(data / "red" / "0.png", data / "blue" / "copy.png")
    manifest, _ = prepare_manifest(data, GraftConfig())
    paths = {record.path for record in manifest.records}
    assert data / "blue" / "copy.png" not in paths and data / "red" / "0.png" not in paths
    assert data / "blue" / "0.png" in paths
    assert sum("the same image under labels" in problem for problem in manifest.problems) == 1
    assert len(manifest.records) == 11  # 12 + the copy, less both copies


def test_a_second_finetuning_of_one_run_is_one_line_not_two_crashes(run):
    from graft.finetuning.finetune import finetune

    with fine_tuning(RunFiles(run)), pytest.raises(RunError, match="being fine-tuned"):
        finetune(run, {"finetune.epochs": 1, "device": "cpu"})


def test_a_pickled_checkpoint_on_resume_is_one_line(run):
    import pickle

    from graft.finetuning.finetune import finetune

    files = RunFiles(run)
    files.checkpoints.mkdir(parents=True)
    files.last_checkpoint.write_bytes(pickle.dumps(math.pi.__class__))  # needs unpickling code: refused
    with pytest.raises(RunError, match="not a weights-only checkpoint"):
        finetune(run, {"finetune.epochs": 1, "device": "cpu"}, resume=True)


# -- a kill at fine-tuning's end (N16) --------------------------------------------------------------------------------

def test_a_commit_killed_after_its_journal_is_finished_by_the_next_reader(run, monkeypatch):
    from graft.run import check_complete, layout, staged_commit, writing

    files = RunFiles(run)

    def killed(_files):  # the process dies once the journal is written, before any rename
        raise KeyboardInterrupt

    with writing(files, mark_incomplete=False):
        monkeypatch.setattr(layout, "recover", killed)
        with pytest.raises(KeyboardInterrupt), staged_commit(files) as stage:
            stage.results.write_text('{"S": 0.5}')
            stage.calibration.write_text('{"temperature": 2.0}')
    monkeypatch.undo()
    assert json.loads(files.results.read_text()).get("S") != 0.5  # nothing renamed yet
    check_complete(files)  # the next reader finishes the commit
    assert json.loads(files.results.read_text()) == {"S": 0.5}
    assert json.loads(files.calibration.read_text()) == {"temperature": 2.0}
    assert not (run / ".staged").exists()


def test_a_commit_killed_before_its_journal_leaves_the_run_as_it_was(run):
    from graft.run import staged_commit, writing

    files = RunFiles(run)
    head = files.head.read_bytes()
    with pytest.raises(KeyboardInterrupt), writing(files, mark_incomplete=False), staged_commit(files) as stage:
        stage.head.write_bytes(b"half a head")
        raise KeyboardInterrupt
    assert files.head.read_bytes() == head and files.results.is_file()
    load_engine(run, "torch", device="cpu")  # still a complete, loadable run


@pytest.mark.parametrize("damage", ["graph truncated", "metadata junk", "metadata NaN temperature", "labels missing"])
def test_a_damaged_onnx_export_is_one_error_naming_it(run, damage):
    from graft.serving.onnx import export_onnx

    files = RunFiles(export_onnx(run).parent)
    if damage == "graph truncated":
        files.onnx.write_bytes(files.onnx.read_bytes()[:200])
    elif damage == "metadata junk":
        files.onnx_metadata.write_bytes(b"\x00{")
    else:
        metadata = json.loads(files.onnx_metadata.read_text())
        if damage == "labels missing":
            del metadata["labels"]
        else:
            metadata["temperature"] = float("nan")
        files.onnx_metadata.write_text(json.dumps(metadata))
    with pytest.raises(RunError, match=r"model\.onnx"):
        load_engine(run, "onnx", device="cpu")


def test_a_truncated_cached_graph_falls_back_to_torch_and_verify_names_it(run):
    from graft.features.engines import export_backbone, graph_file
    from graft.run import load_run, read_backbone_description, read_run_config

    files = RunFiles(run)
    cache = read_run_config(files).features.cache_dir
    graph = graph_file(read_backbone_description(files), cache)
    export_backbone(load_run(run, "cpu").backbone, graph)  # as the fit would have (sessions are shared per process)
    graph.write_bytes(graph.read_bytes()[:100])
    assert load_engine(run, "auto", device="cpu").engine == "torch"
    assert any(str(graph) in line for line in verify(cache))


def test_once_the_body_is_in_the_gate_no_longer_times_the_connection():
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.post("/identify")
    async def slow(request: Request):  # Request imported at module level: FastAPI resolves annotations there
        body = await request.body()

        async def parts():  # a slow answer: the server listens for a disconnect through receive() meanwhile
            await asyncio.sleep(0.5)
            yield f"{len(body)} bytes".encode()

        return StreamingResponse(parts())

    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)  # the client waits for its answer: no more messages

    sent = through_gate(app, receive, GateRules(None, 1000, idle_seconds=0.1, total_seconds=0.2))
    assert sent[0]["status"] == 200 and b"2 bytes" in b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04junk", b"\x93NUMPY junk"])
def test_a_damaged_out_of_fold_file_is_one_error_naming_it(run, damage):
    from graft.run import read_out_of_fold

    RunFiles(run).out_of_fold.write_bytes(damage)
    with pytest.raises(RunError, match=r"out-of-fold\.npz"):
        read_out_of_fold(run)

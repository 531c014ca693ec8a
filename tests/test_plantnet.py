"""The Pl@ntNet-compatible API: what the published clients send, every field they read, their error shape, keys and
quotas, the reject 404, related images and CORS."""

from __future__ import annotations

import io
import logging

import pytest
from PIL import Image

from conftest import png, ready_client
from graft.serving.keys import KeyRing
from graft.serving.web import create_app
from graft.training.fit import fit

TAXONOMY = """label,genus,family,authorship,common_names,gbif
red,Rubus,Rosaceae,L.,bramble;blackberry,2992
green,Viridia,Testaceae,Mill.,,
blue,Caerulea,Testaceae,,,
"""


@pytest.fixture
def run(folder_data, tiny_config, tmp_path):
    (tmp_path / "taxonomy.csv").write_text(TAXONOMY)
    fit(folder_data, tmp_path / "run", tiny_config.updated({"data.taxonomy": str(tmp_path / "taxonomy.csv")}))
    return tmp_path / "run"


@pytest.fixture
def client(run):
    return ready_client(create_app(run))


def photos(n: int, colour=(200, 40, 40)) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"p{i}.png", png(colour), "image/png")) for i in range(n)]


def test_one_image_with_organ_auto_answers_every_field_clients_read(client):
    answer = client.post("/v2/identify/all", files=photos(1), data={"organs": "auto"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    top = body["results"][0]
    assert top["species"]["scientificNameWithoutAuthor"] == "red"
    assert top["species"]["scientificName"] == "red L." and top["species"]["scientificNameAuthorship"] == "L."
    assert top["species"]["genus"]["scientificNameWithoutAuthor"] == "Rubus"
    assert top["species"]["family"]["scientificName"] == "Rosaceae"
    assert top["species"]["commonNames"] == ["bramble", "blackberry"] and top["gbif"] == {"id": "2992"}
    assert 0 < top["score"] <= 1 and body["bestMatch"] == "red L."
    assert [r["score"] for r in body["results"]] == sorted((r["score"] for r in body["results"]), reverse=True)
    assert body["query"] == {"project": "all", "images": ["p0.png"], "organs": ["auto"], "includeRelatedImages": False,
                             "noReject": False, "type": "kt"}
    assert body["preferedReferential"] == "all" and body["language"] == "en" and body["version"].startswith("graft")
    assert body["remainingIdentificationRequests"] is None  # an open server has no quota
    assert body["predictedOrgans"] == [] and "otherResults" not in body


def test_organs_as_form_fields_or_query_parameters_give_the_same_answer(client):
    organs = ["flower", "leaf", "fruit"]
    as_form = client.post("/v2/identify/all", files=photos(3), data={"organs": organs})
    as_query = client.post("/v2/identify/all", params=[("organs", o) for o in organs], files=photos(3))
    assert as_form.status_code == as_query.status_code == 200
    assert as_form.json()["results"] == as_query.json()["results"]
    assert [o["organ"] for o in as_form.json()["predictedOrgans"]] == organs
    assert as_form.json()["query"]["organs"] == organs


def test_genus_and_family_rank_by_summed_species_probability_when_detailed(client):
    body = client.post("/v2/identify/all", params={"detailed": "true", "nb-results": "2"}, files=photos(1)).json()
    assert len(body["results"]) == 2
    families = {entry["family"]["scientificName"]: entry["score"] for entry in body["otherResults"]["family"]}
    full = client.post("/identify", files=[("files", ("p.png", png(), "image/png"))], params={"top_k": 3}).json()
    species = {r["label"]: r["probability"] for r in full["ranking"]}
    assert families["Testaceae"] == pytest.approx(species["green"] + species["blue"], abs=1e-4)
    assert full["genus"][0]["label"] == "Rubus"  # graft's own answer carries them too


@pytest.mark.parametrize("params, files, data, status, message", [
    ({}, 2, {"organs": ["leaf"]}, 400, "1 organs for 2 images"),
    ({}, 1, {"organs": ["root"]}, 400, 'unknown organ "root"'),
    ({}, 6, {}, 400, "at most 5"),
    ({}, 0, {"organs": ["leaf"]}, 400, "no images"),
    ({"nb-results": "many"}, 1, {}, 400, "nb-results"),
    ({"no-reject": "maybe"}, 1, {}, 400, "no-reject"),
])
def test_bad_requests_answer_in_plantnets_error_shape(client, params, files, data, status, message):
    answer = client.post("/v2/identify/all", params=params, files=photos(files) or None, data=data)
    body = answer.json()
    assert answer.status_code == status and body["statusCode"] == status and body["error"] == "Bad Request"
    assert message in body["message"]


def test_an_unknown_project_is_a_404_naming_the_projects(client):
    body = client.post("/v2/identify/weurope", files=photos(1)).json()
    assert body["statusCode"] == 404 and body["error"] == "Not Found" and '"all"' not in body["message"]
    assert "all" in body["message"]


def test_too_much_data_is_a_413_in_their_shape(client, monkeypatch):
    from graft.serving import plantnet

    monkeypatch.setattr(plantnet, "MAX_TOTAL_BYTES", 100)
    body = client.post("/v2/identify/all", files=photos(2)).json()
    assert body["statusCode"] == 413 and body["error"] == "Request Entity Too Large"


def test_keys_and_daily_quotas(run, tmp_path, caplog):
    keys = tmp_path / "keys.txt"
    keys.write_text("# key quota\nsecret-key-1 2\nother,5\n")
    client = ready_client(create_app(run, keys=KeyRing.read(keys)))
    with caplog.at_level(logging.DEBUG):
        missing = client.post("/v2/identify/all", files=photos(1))
        wrong = client.post("/v2/identify/all", params={"api-key": "secret-key-2"}, files=photos(1))
        first = client.post("/v2/identify/all", params={"api-key": "secret-key-1"}, files=photos(1))
        second = client.post("/v2/identify/all", params={"api-key": "secret-key-1"}, files=photos(1))
        third = client.post("/v2/identify/all", params={"api-key": "secret-key-1"}, files=photos(1))
        own = client.post("/identify", files=[("files", ("p.png", png(), "image/png"))])
    assert missing.status_code == wrong.status_code == own.status_code == 401
    assert missing.json()["error"] == "Unauthorized"
    assert [first.json()["remainingIdentificationRequests"], second.json()["remainingIdentificationRequests"]] == [1, 0]
    assert first.headers["RateLimit-Policy"] == "2;w=86400" and first.headers["RateLimit"].startswith("limit=2, remaining=1")
    assert third.status_code == 429 and third.json()["error"] == "Too Many Requests"
    assert third.headers["RateLimit"].startswith("limit=2, remaining=0, reset=")
    server_side = [r for r in caplog.records if not r.name.startswith("httpx")]  # the test client logs its own URLs
    assert server_side and not any("secret-key" in r.getMessage() for r in server_side)
    assert client.post("/v2/identify/all", params={"api-key": "other"}, files=photos(1)).status_code == 200


def test_access_logs_show_no_key():
    from graft.serving.keys import redact_keys_in_access_logs

    redact_keys_in_access_logs()
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "POST", "/v2/identify/all?api-key=secret-key-1&lang=fr", "1.1", 200), None)
    logging.getLogger("uvicorn.access").filters[0].filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "POST /v2/identify/all?api-key=***&lang=fr HTTP/1.1" 200'


@pytest.mark.parametrize("line", ["key-without-quota", "key many"])
def test_a_bad_keys_file_names_the_line(tmp_path, line):
    from graft.errors import ConfigError

    (tmp_path / "keys.txt").write_text(f"good 3\n{line}\n")
    with pytest.raises(ConfigError, match="line 2 is not 'KEY QUOTA'"):
        KeyRing.read(tmp_path / "keys.txt")


def test_unknown_species_is_their_404_unless_no_reject(folder_data, tiny_config, tmp_path):
    fit(folder_data, tmp_path / "run", tiny_config.updated({"predict.reject_threshold": 1.0}))
    client = ready_client(create_app(tmp_path / "run"))
    rejected = client.post("/v2/identify/all", files=photos(1))
    assert rejected.status_code == 404
    assert rejected.json() == {"statusCode": 404, "error": "Not Found", "message": "Species not found"}
    kept = client.post("/v2/identify/all", params={"no-reject": "true"}, files=photos(1))
    assert kept.status_code == 200 and kept.json()["results"]


def test_related_images_of_the_top_species_with_thumbnails(client):
    body = client.post("/v2/identify/all", params={"include-related-images": "true"}, files=photos(1)).json()
    images = body["results"][0]["images"]
    assert len(images) == 3 and all(set(image["url"]) == {"o", "m", "s"} for image in images)
    assert body["results"][1]["images"] == []
    small = client.get(images[0]["url"]["s"].replace("http://testserver", ""))
    assert small.status_code == 200 and max(Image.open(io.BytesIO(small.content)).size) <= 256
    assert client.get("/v2/images/all/100000/s").json()["statusCode"] == 404
    assert client.get("/v2/images/all/0/xl").status_code == 404


def test_cors_lets_a_browser_app_on_another_origin_call(run):
    client = ready_client(create_app(run, cors_origins=["https://app.example"]))
    preflight = client.options("/v2/identify/all", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    closed = ready_client(create_app(run)).options("/v2/identify/all", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in closed.headers


def test_a_failed_request_costs_no_quota(run, tmp_path):
    (tmp_path / "keys.txt").write_text("k1 1\n")
    client = ready_client(create_app(run, keys=KeyRing.read(tmp_path / "keys.txt")))
    junk = [("images", ("junk.jpg", b"not an image", "image/jpeg"))]
    assert client.post("/v2/identify/all", params={"api-key": "k1"}, files=junk).status_code == 415
    bad_organ = client.post("/v2/identify/all", params={"api-key": "k1"}, files=photos(1), data={"organs": "root"})
    assert bad_organ.status_code == 400
    answer = client.post("/v2/identify/all", params={"api-key": "k1"}, files=photos(1))
    assert answer.status_code == 200 and answer.json()["remainingIdentificationRequests"] == 0

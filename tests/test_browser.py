"""The web page in a real headless browser: Debian's chromium driven by Playwright (``make test`` installs it)."""

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from PIL import Image

from graft.serving.web import create_app
from graft.training.fit import fit

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(folder_data, tiny_config, tmp_path):
    (tmp_path / "taxonomy.csv").write_text("label,genus,family\nblue,Caerulea,Testaceae\nred,Rubus,Rosaceae\n")
    fit(folder_data, tmp_path / "run", tiny_config.updated({"data.taxonomy": str(tmp_path / "taxonomy.csv")}))
    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(create_app(tmp_path / "run", "torch"), host="127.0.0.1", port=port,
                                             log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    instance.should_exit = True
    thread.join(timeout=10)


def test_upload_two_photos_identify_and_read_the_ranking(server, folder_data, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (apt-get install chromium; make test does it)"
    photos = [str(p) for p in sorted((folder_data / "blue").glob("*.png"))[:2]]
    for photo in photos:  # bigger thumbnails for the screenshot
        Image.open(photo).resize((160, 160)).save(photo)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(server)
        page.set_input_files("#picker", photos)
        assert page.locator(".photo").count() == 2
        page.select_option("select >> nth=0", "Flower")
        page.click("#identify")
        page.wait_for_selector("#ranking li", timeout=30_000)
        labels = page.locator("#ranking .label").all_inner_texts()
        taxonomy = page.locator("#taxonomy").inner_text()
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert labels[0] == "blue" and set(labels) == {"red", "green", "blue"}
    assert taxonomy.startswith("genus: Caerulea") and "family: Testaceae" in taxonomy
    assert (tmp_path / "page.png").stat().st_size > 10_000

"""Hostile input, replayed: broken and tampered run files, files that are not files, configs that explode, bad flags,
and HTTP requests without keys, with odd numbers, stalled bodies or a manifest that names a secret; then a load test.

Every case runs the real command line (a subprocess) or the real server (`graft serve` on loopback) and is classed:
    traceback   a Python traceback (or graft's "internal error" line) on stderr    hang    no answer in time
    silent      exit 0 with an answer that differs from the untouched run's (a wrong answer nobody is told of)
    5xx         a server error                          open        a data route answered without a key
    leak        a file outside the run's images served  ok          a one-line refusal, or the untouched answer
Totals are printed and appended to bench/results/hostile.csv (bench/record.py). A small seeded run is made first.

    python bench/hostile.py [--load-requests 25]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from record import record

GRAFT = [sys.executable, "-m", "graft"]
SECRET = b"graft-hostile-secret"


def make_run(root: Path) -> tuple[Path, Path]:
    for index, colour in enumerate(((200, 40, 40), (40, 60, 200), (40, 180, 60))):
        for i in range(6):
            rng = np.random.default_rng(100 * index + i)
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            (root / "data" / f"c{index}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "data" / f"c{index}" / f"{i}.png")
    (root / "config.yaml").write_text(json.dumps({
        "backbone": {"name": "test_efficientnet", "pretrained": False, "image_size": 32},
        "features": {"cache_dir": str(root / "cache"), "num_workers": 0},
        "head": {"kind": "linear", "repeats": 1}}))
    subprocess.run([*GRAFT, "fit", str(root / "data"), "--out", str(root / "run"), "--config",
                    str(root / "config.yaml"), "-q"], check=True, capture_output=True)
    return root / "run", root / "data" / "c0" / "0.png"


def classify(command: list[str], reference: str | None, timeout: float = 120) -> str:
    """The case's class (module docstring); anything but ok prints the command's last line of stderr."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "hang"
    outcome = "ok"
    if "Traceback (most recent call last)" in done.stderr or "internal error:" in done.stderr:
        outcome = "traceback"  # graft's last-resort line counts as one: it is a case no rule handles
    elif done.returncode == 0 and reference is not None and _ranking(done.stdout) != _ranking(reference):
        outcome = "silent"
    if outcome != "ok":
        print(f"    {(done.stderr.strip().splitlines() or [''])[-1][:200]}", flush=True)
    return outcome


def _ranking(output: str) -> list:
    try:
        return [(item["label"], round(item["probability"], 4)) for item in json.loads(output)["ranking"]]
    except (ValueError, KeyError, TypeError):
        return []


def run_file_cases(run: Path) -> dict[str, tuple[str, bytes | None]]:
    """(file, new bytes) per case; None bytes: the case edits the file itself (see :func:`apply`)."""
    cases: dict[str, tuple[str, bytes | None]] = {}
    for name in ("labels.json", "backbone.json", "calibration.json", "taxonomy.json", "head.safetensors",
                 "config.yaml", "manifest.csv", "results.json"):
        original = (run / name).read_bytes()
        cases |= {f"{name} truncated": (name, original[: len(original) // 2]), f"{name} empty": (name, b""),
                  f"{name} junk": (name, os.urandom(256)), f"{name} binary": (name, bytes(range(256)) * 4)}
    for value in ("-2", "0", "NaN", "Infinity", '"hot"', "null", "1e400"):
        cases[f"temperature {value}"] = ("calibration.json", f'{{"temperature": {value}}}'.encode())
    cases |= {"labels not a list": ("labels.json", b'{"a": 1}'), "labels twice": ("labels.json", b'["c0","c0","c1"]'),
              "labels too few": ("labels.json", b'["c0"]'), "crop_pct 0": ("backbone.json", None),
              "std 0": ("backbone.json", None), "head NaN": ("head.safetensors", None),
              "head std 0": ("head.safetensors", None), "taxonomy list": ("taxonomy.json", b'{"c0": ["Acer"]}'),
              "config alias bomb": ("config.yaml", _bomb())}
    return cases


def _bomb() -> bytes:
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"] + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9)
                                             + "]" for i in range(9)]
    return "\n".join(lines).encode()


def apply(run: Path, case: str, name: str, data: bytes | None) -> None:
    if data is not None:
        (run / name).write_bytes(data)
        return
    if name == "backbone.json":
        described = json.loads((run / name).read_text())
        described["data_config"]["crop_pct" if case == "crop_pct 0" else "std"] = 0 if case == "crop_pct 0" else [0, 0, 0]
        (run / name).write_text(json.dumps(described))
        return
    from safetensors.numpy import load_file, save_file

    state = load_file(run / name)
    key = next(k for k in state if (k.endswith("std") if case == "head std 0" else True))
    state[key] = np.zeros_like(state[key]) if case == "head std 0" else np.full_like(state[key], np.nan)
    save_file(state, str(run / name))


def cli_cases(root: Path, run: Path, image: Path) -> Counter:
    totals: Counter = Counter()
    reference = subprocess.run([*GRAFT, "predict", str(run), str(image), "--json"], capture_output=True,
                               text=True).stdout
    for case, (name, data) in run_file_cases(run).items():
        for engine in ("auto", "torch"):
            copy = root / "tampered"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(run, copy)
            apply(copy, case, name, data)
            outcome = classify([*GRAFT, "predict", str(copy), str(image), "--json", "--engine", engine], reference)
            totals[outcome] += 1
            if outcome != "ok":
                print(f"  {outcome}: predict --engine {engine}, {case}", flush=True)
    fifo = root / "fifo.jpg"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    (root / "bomb.yaml").write_bytes(_bomb())
    (root / "wide.csv").write_text("path,label\n" + f"{image},c0\n" + "x.png," + "x" * 200_000 + "\n")
    (root / "out-file").write_text("mine")
    others = {
        "predict a FIFO": [*GRAFT, "predict", str(run), str(fifo)],
        "predict /dev/zero": [*GRAFT, "predict", str(run), "/dev/zero", "--engine", "torch"],
        "fit --config alias bomb": [*GRAFT, "fit", str(root / "data"), "-o", str(root / "r2"), "--config",
                                    str(root / "bomb.yaml")],
        "fit --config /dev/zero": [*GRAFT, "fit", str(root / "data"), "-o", str(root / "r2"), "--config", "/dev/zero"],
        "inspect a wide CSV field": [*GRAFT, "inspect", str(root / "wide.csv")],
        "fit --out a file": [*GRAFT, "fit", str(root / "data"), "-o", str(root / "out-file"), "--config",
                             str(root / "config.yaml")],
        "predict --top -1": [*GRAFT, "predict", str(run), str(image), "--top", "-1"],
        "predict --fusion bogus": [*GRAFT, "predict", str(run), str(image), "--fusion", "bogus"],
        "cache verify, no directory": [*GRAFT, "cache", "verify", "--cache-dir", str(root / "nowhere")],
        "serve --port 70000": [*GRAFT, "serve", str(run), "--port", "70000"],
        "serve --port -1": [*GRAFT, "serve", str(run), "--port", "-1"],
        "serve --max-mb nan": [*GRAFT, "serve", str(run), "--max-mb", "nan"],
        "serve --max-mb 0": [*GRAFT, "serve", str(run), "--max-mb", "0"],
        "serve --max-files 0": [*GRAFT, "serve", str(run), "--max-files", "0"],
        "serve a missing run": [*GRAFT, "serve", str(root / "nothing")],
    }
    for case, command in others.items():
        outcome = classify(command, None, timeout=60)
        totals[outcome] += 1
        if outcome != "ok":
            print(f"  {outcome}: {case}", flush=True)
    return totals


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_cases(root: Path, run: Path, image: Path, load_requests: int) -> Counter:
    served = root / "served"
    shutil.rmtree(served, ignore_errors=True)
    shutil.copytree(run, served)
    (root / "secret.txt").write_bytes(SECRET)
    rows = (served / "manifest.csv").read_text().splitlines()
    rows[1] = ",".join([str(root / "secret.txt"), *rows[1].split(",")[1:]])
    (served / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "keys.txt").write_text("good 100000\n")
    port = free_port()
    server = subprocess.Popen([*GRAFT, "serve", str(served), "--port", str(port), "--api-keys", str(root / "keys.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    totals: Counter = Counter()
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        photo = image.read_bytes()
        probes = []
        for key in (None, "bad", "good"):
            params = {"api-key": key} if key else {}
            probes += [("GET", "/labels", params, None), ("GET", "/v2/images/all/0/o", params, None),
                       ("GET", "/v2/images/all/1/s", params, None), ("GET", "/v2/images/nope/0/o", params, None),
                       ("POST", "/identify", params, [("files", ("a.png", photo))]),
                       ("POST", "/v2/identify/all", params, [("images", ("a.png", photo))])]
            for value in ("²", "1" * 5000, "-1", "0", "x", "1e3"):
                probes.append(("POST", "/v2/identify/all", params | {"nb-results": value}, [("images", ("a.png", photo))]))
            for junk in (b"", b"\x00" * 100, os.urandom(5000), b"GIF89a" + os.urandom(100)):
                probes.append(("POST", "/v2/identify/all", params, [("images", ("j.jpg", junk))]))
                probes.append(("POST", "/identify", params, [("files", ("j.jpg", junk))]))
        for method, path, params, files in probes:
            try:
                answer = httpx.request(method, base + path, params=params, files=files, timeout=60)
            except httpx.TimeoutException:
                totals["hang"] += 1
                continue
            data_route = path != "/health"
            if answer.status_code >= 500:
                totals["5xx"] += 1
                print(f"  5xx: {method} {path} {params}")
            elif data_route and params.get("api-key") != "good" and answer.status_code < 400:
                totals["open"] += 1
                print(f"  open: {method} {path} {params}")
            elif SECRET in answer.content:
                totals["leak"] += 1
                print(f"  leak: {method} {path}")
            else:
                totals["ok"] += 1
        totals += stalled_uploads(port)
        totals["load non-2xx"] += load(base, photo, load_requests)
    finally:
        server.terminate()
        server.wait(30)
    if "Traceback (most recent call last)" in (server.stderr.read() if server.stderr else ""):
        totals["traceback"] += 1
    return totals


def stalled_uploads(port: int, count: int = 10, wait: float = 20.0) -> Counter:
    """``count`` uploads that send their headers and half their body, then nothing: each must be cut off in time."""
    sockets = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"POST /v2/identify/all?api-key=good HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                     b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n" + b"x" * 1000)
        conn.settimeout(wait)
        sockets.append(conn)
    totals: Counter = Counter()
    for conn in sockets:
        try:
            answer = conn.recv(200)
            totals["ok" if b" 408 " in answer or not answer else "hung request"] += 1
        except TimeoutError:
            totals["hung request"] += 1
        finally:
            conn.close()
    return totals


def load(base: str, photo: bytes, requests: int, clients: int = 8) -> int:
    def client(_: int) -> int:
        failures = 0
        with httpx.Client(timeout=120) as session:
            for _ in range(requests):
                files = [("images", (f"{i}.png", photo)) for i in range(3)]
                answer = session.post(f"{base}/v2/identify/all", params={"api-key": "good"}, files=files)
                failures += not answer.is_success
        return failures

    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(client, range(clients)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-requests", type=int, default=25, help="Requests per client (8 clients, 3 photos).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        os.environ["GRAFT_CACHE_DIR"] = str(root / "cache")
        run, image = make_run(root)
        cli = cli_cases(root, run, image)
        http = http_cases(root, run, image, args.load_requests)
    rows = [{"part": part, **{k: counts.get(k, 0) for k in ("ok", "traceback", "hang", "silent", "5xx", "open",
                                                            "leak", "hung request", "load non-2xx")}}
            for part, counts in (("cli", cli), ("http", http))]
    for row in rows:
        print(", ".join(f"{key} {value}" for key, value in row.items()))
    print(f"rows appended to {record('hostile', rows)}")


if __name__ == "__main__":
    main()

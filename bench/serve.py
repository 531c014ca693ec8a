"""Serving latency and throughput on loopback: p50/p95 of POST /identify for an observation of 3 photos, torch
engine vs ONNX engine (one run), and requests/s with 8 concurrent clients (48 requests per engine), micro-batching
on and off.

With ``--phone``, the 3 photos are 12 MP JPEGs (3000 x 4000, made from the run's photos), and each engine also serves
a copy of the run with ``features.decode: full`` (every pixel decoded: graft before issue 12). Target: p50 <= 80 ms.

    python bench/serve.py RUN [--requests 30] [--phone]    (exports RUN to ONNX first if it has no model.onnx)
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from graft.config import GraftConfig
from graft.run import RunFiles, evaluation_part, read_manifest
from graft.serving.onnx import export_onnx

sys.path.insert(0, str(Path(__file__).parent))
from extract import phone_photo  # the same 12 MP photos as the extraction bench

from record import record


def serve(run: Path, engine: str, window_ms: float = 0.0) -> tuple[subprocess.Popen, str]:
    """``graft serve`` in its own process, as users run it (a server thread here would share the client's GIL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    graft = Path(sys.executable).with_name("graft")
    server = subprocess.Popen([str(graft), "serve", str(run), "--engine", engine, "--port", str(port),
                               "--batch-window-ms", str(window_ms)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"{engine} server did not become healthy")


# one client, kept-alive connections, as an app talks to its server (a new httpx client per request adds ~18 ms here)
CLIENT = httpx.Client()
CLIENTS = 8


def post(url: str, photos: list[Path], handler_ms: list[float] | None = None) -> float:
    """Seconds for one request; ``handler_ms`` collects the server's own time (decode + forward, no HTTP)."""
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    start = time.perf_counter()
    response = CLIENT.post(f"{url}/identify", files=files, timeout=120)
    response.raise_for_status()
    if handler_ms is not None:
        handler_ms.append(response.json()["milliseconds"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--batch-window-ms", type=float, default=5.0, help="micro-batching window of its row")
    parser.add_argument("--phone", action="store_true", help="3 generated 12 MP JPEGs; also serve with full decoding")
    args = parser.parse_args()
    if not RunFiles(args.run).onnx.is_file():
        export_onnx(args.run)
    photos = [r.path for r in evaluation_part(read_manifest(args.run)).records[:3]]
    variants = [("torch", args.run, "torch", 0.0), ("onnx", args.run, "onnx", 0.0),
                ("onnx, micro-batching", args.run, "onnx", args.batch_window_ms)]
    if args.phone:
        folder = Path(tempfile.mkdtemp(prefix="graft-serve-"))
        photos = [phone_photo(p, folder / f"{i}.jpg", i) for i, p in enumerate(photos)]
        full = with_full_decoding(args.run, folder / "run-full")
        variants += [("torch, full decode", full, "torch", 0.0), ("onnx, full decode", full, "onnx", 0.0)]
    results = {}
    for name, run, engine, window in variants:
        server, url = serve(run, engine, window)
        post(url, photos)  # warm-up
        handler: list[float] = []
        latencies = sorted(post(url, photos, handler) for _ in range(args.requests))
        start = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(post, [url] * 48, [photos] * 48))
        rate = 48 / (time.perf_counter() - start)
        server.terminate()
        server.wait()
        p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
        results[name] = (statistics.median(latencies) * 1000, p95 * 1000, rate)
        print(f"{name:18s}: p50 {results[name][0]:7.1f} ms (in the handler {statistics.median(handler):5.1f})  "
              f"p95 {results[name][1]:7.1f} ms  "
              f"{CLIENTS} clients: {rate:5.2f} requests/s  ({args.requests} sequential requests of 3 photos)")
    print(f"onnx / torch: p50 latency x{results['onnx'][0] / results['torch'][0]:.2f}, "
          f"throughput x{results['onnx'][2] / results['torch'][2]:.2f}")
    batched, alone = results["onnx, micro-batching"], results["onnx"]
    print(f"micro-batching on / off, {CLIENTS} clients: throughput x{batched[2] / alone[2]:.2f}, "
          f"p50 latency of a lone request x{batched[0] / alone[0]:.2f}")
    if args.phone:
        print(f"onnx, reduced / full decoding: p50 latency x{results['onnx'][0] / results['onnx, full decode'][0]:.2f}")
    rows = [{"variant": name, "photos": "12 MP" if args.phone else "the run's", "p50_ms": round(p50, 1),
             "p95_ms": round(p95, 1), "clients": CLIENTS, "requests_per_s": round(rate, 2)}
            for name, (p50, p95, rate) in results.items()]
    print(f"rows appended to {record('serve', rows)}")


def with_full_decoding(run: Path, copy: Path) -> Path:
    """A copy of ``run`` whose config decodes every pixel."""
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.lock"))
    files = RunFiles(copy)
    files.config.write_text(GraftConfig.from_yaml(files.config).updated({"features.decode": "full"}).to_yaml())
    return copy


if __name__ == "__main__":
    main()

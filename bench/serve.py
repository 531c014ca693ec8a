"""Serving latency and throughput on loopback: p50/p95 of POST /identify for an observation of 3 photos, torch
engine vs ONNX engine (one run), and requests/s with 4 concurrent clients (bounded: 40 requests per engine).

    python bench/serve.py RUN [--requests 30]      (exports RUN to ONNX first if it has no model.onnx)
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import uvicorn

from graft.run import RunFiles, evaluation_part, read_manifest
from graft.serving.app import create_app
from graft.serving.onnx import export_onnx


def serve(run: Path, engine: str) -> tuple[uvicorn.Server, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run, engine), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if server.started and httpx.get(f"{url}/health").status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{engine} server did not become healthy")


def post(url: str, photos: list[Path]) -> float:
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    start = time.perf_counter()
    response = httpx.post(f"{url}/identify", files=files, timeout=120)
    response.raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    if not RunFiles(args.run).onnx.is_file():
        export_onnx(args.run)
    photos = [r.path for r in evaluation_part(read_manifest(args.run)).records[:3]]
    results = {}
    for engine in ("torch", "onnx"):
        server, url = serve(args.run, engine)
        post(url, photos)  # warm-up
        latencies = sorted(post(url, photos) for _ in range(args.requests))
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(post, [url] * 40, [photos] * 40))
        rate = 40 / (time.perf_counter() - start)
        server.should_exit = True
        p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
        results[engine] = (statistics.median(latencies) * 1000, p95 * 1000, rate)
        print(f"{engine:5s}: p50 {results[engine][0]:7.1f} ms  p95 {results[engine][1]:7.1f} ms  "
              f"4 clients: {rate:5.2f} requests/s  ({args.requests} sequential requests of 3 photos)")
    print(f"onnx / torch: p50 latency x{results['onnx'][0] / results['torch'][0]:.2f}, "
          f"throughput x{results['onnx'][2] / results['torch'][2]:.2f}")


if __name__ == "__main__":
    main()

"""Bounded load test of ``segearth serve`` on loopback: throughput, latency, peak RSS, errors.

The server runs in its own process (so its peak RSS is its own) on 127.0.0.1 with a random-weight
model; one GeoTIFF is uploaded, then N client threads share a fixed number of ``POST /images/{id}/ask``
requests and the run stops. Two phases by default:

* ``below``: the queue holds every client (``max_queue >= clients``): the error count must be 0;
* ``above``: more clients than the queue holds: the only error allowed is ``503`` (with Retry-After).

    python benchmarks/serve.py [--config small|released] [--clients 8] [--requests 200]
                               [--raster PATH] [--phase below|above|both]

Prints one JSON line per phase (``peak_rss_mb``: the server; ``children_peak_rss_mb``: its
upload-preparation zygote) and exits 1 if a phase breaks its error rule. Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

QUESTIONS = [
    "where could a boat travel?", "which surfaces stay coolest in summer?", "the buildings", "the main road",
    "where could a new house be built?", "which areas would flood first?", "the vegetation", "the parking lots",
]
DEFAULT_RASTER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geotiff" / "naip_rgbn_2019.tif"


def run_server(config: str, port: int, max_queue: int) -> None:
    """Child process: the app with a random-weight model, on loopback only."""
    import torch
    import uvicorn

    from segearth import SegEarthR1, released_config, small_config
    from segearth.predictor import Predictor
    from segearth.serve import ServeSettings, create_app
    from segearth.tokenizer import byte_level_tokenizer

    torch.manual_seed(0)
    cfg = small_config() if config == "small" else released_config(vocab_size=259)
    predictor = Predictor(SegEarthR1(cfg).eval(), byte_level_tokenizer())
    app = create_app(predictor, f"random-{config}", ServeSettings(max_queue=max_queue, request_timeout_s=600))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    """The server's high-water resident memory (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _children_peak_rss_mb(pid: int) -> float:
    """Summed high-water memory of the server's child processes (the upload-preparation zygote)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                total += _peak_rss_mb(int(stat.parent.name))
        except (OSError, ValueError, IndexError):  # exited meanwhile
            continue
    return round(total, 1)


def _wait_ready(client, base: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if client.get(base + "/health").status_code == 200:
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not start in time")


def load(base: str, image_id: str, clients: int, requests: int, max_seconds: float) -> dict:
    """Fire ``requests`` asks from ``clients`` threads; stop early after ``max_seconds``."""
    import httpx

    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    remaining = [requests]
    stop_at = time.monotonic() + max_seconds

    def worker(index: int) -> None:
        with httpx.Client(timeout=600) as client:
            while time.monotonic() < stop_at:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                    n = remaining[0]
                question = QUESTIONS[(n + index) % len(QUESTIONS)]
                t = time.perf_counter()
                r = client.post(f"{base}/images/{image_id}/ask", json={"questions": [question], "format": "geojson"})
                elapsed = time.perf_counter() - t
                with lock:
                    statuses[r.status_code] += 1
                    if r.status_code == 200:
                        latencies.append(elapsed)
                if r.status_code == 503:  # a polite client waits as told
                    time.sleep(min(float(r.headers.get("Retry-After", "1")), 2.0))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    latencies.sort()
    done = sum(statuses.values())
    return {
        "requests": done, "ok": statuses[200], "errors": {str(k): v for k, v in statuses.items() if k != 200},
        "wall_s": round(wall, 2), "throughput_rps": round(statuses[200] / wall, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * latencies[max(0, int(0.95 * len(latencies)) - 1)], 1) if latencies else None,
    }


def phase(name: str, args: argparse.Namespace, clients: int, max_queue: int) -> dict:
    import httpx

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--config", args.config,
                             "--max-queue", str(max_queue)])
    try:
        with httpx.Client(timeout=600) as client:
            _wait_ready(client, base, proc)
            with open(args.raster, "rb") as f:
                up = client.post(base + "/images", files={"file": (args.raster.name, f, "image/tiff")})
            up.raise_for_status()
            image_id = up.json()["id"]
            t = time.perf_counter()
            client.post(f"{base}/images/{image_id}/ask", json={"questions": ["warm-up"]}).raise_for_status()
            cold = time.perf_counter() - t
        result = load(base, image_id, clients, args.requests, args.max_seconds)
        rss, children_rss = _peak_rss_mb(proc.pid), _children_peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    errors = result["errors"]
    ok = not errors if name == "below" else set(errors) <= {"503"}
    return {"phase": name, "config": args.config, "clients": clients, "max_queue": max_queue,
            "raster": args.raster.name, "first_question_s": round(cold, 3), **result,
            "peak_rss_mb": rss, "children_peak_rss_mb": children_rss,
            "rule": "no errors" if name == "below" else "only 503", "pass": ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["small", "released"], default="small")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="Stop a phase after this long.")
    parser.add_argument("--raster", type=Path, default=DEFAULT_RASTER)
    parser.add_argument("--phase", choices=["below", "above", "both"], default="both")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: run the server child
    parser.add_argument("--max-queue", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_server(args.config, args.serve, args.max_queue)
        return
    if not args.raster.is_file():
        raise SystemExit(f"{args.raster} not found (pass --raster)")
    plans = {"below": (args.clients, args.clients), "above": (args.clients * 2, max(args.clients // 4, 1))}
    failed = False
    for name in (["below", "above"] if args.phase == "both" else [args.phase]):
        clients, max_queue = plans[name]
        row = phase(name, args, clients, max_queue)
        print(json.dumps(row), flush=True)
        failed |= not row["pass"]
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()

"""``threadline bench tracking``: pixel requests/s and latency of one endpoint process.

The endpoint runs as its own process (``threadline tracking``) against a running broker; the
load comes from a second process (an aiohttp client with ``concurrency`` connections) that
requests genuine pixel URLs for ``seconds`` and records every latency.  Every hit must then be
in ``tracking.raw``: the figure counts only hits that were recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

from pipeline.bench.common import machine_facts
from pipeline.broker import create_topics, free_port, kafka_bootstrap
from pipeline.settings import Settings
from pipeline.streams.runner import count_records
from pipeline.tracking.tokens import Keyring, TokenPayload, open_url, sign_token

TARGET_RPS = 5_000
TARGET_P99_MS = 20.0


async def _load(urls: list[str], seconds: float, concurrency: int) -> list[float]:
    import aiohttp

    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker(offset: int) -> None:
            n = offset
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with session.get(urls[n % len(urls)]) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"pixel answered {response.status}")
                latencies.append((time.perf_counter() - started) * 1000)
                n += concurrency
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies


def load_main() -> None:
    """Entry of the load process: reads its job as JSON on stdin, prints latencies as JSON."""
    job = json.load(sys.stdin)
    latencies = asyncio.run(_load(job["urls"], job["seconds"], job["concurrency"]))
    json.dump(latencies, sys.stdout)


def run_tracking_bench(settings: Settings, *, seconds: float, concurrency: int, data_dir: Path,
                       progress: Callable[[str], None] = lambda _m: None) -> dict:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topic_prefix": prefix})})
    keyring = Keyring.from_settings(settings.tracking)
    urls = [open_url("http://127.0.0.1:{port}", sign_token(TokenPayload(
        "open", "bench", f"<m{n}@bench>", f"r{n}@customer.example", "cmp-1", issued_at=int(time.time()) - 3600),
        keyring)) for n in range(1000)]
    with kafka_bootstrap(settings, data_dir / "bench-broker.log") as bootstrap:
        create_topics(settings.kafka, bootstrap, topics=("tracking.raw",))
        port = free_port()
        env = {**os.environ, "THREADLINE_KAFKA_BOOTSTRAP": bootstrap, "THREADLINE_KAFKA_TOPIC_PREFIX": prefix,
               "THREADLINE_WORKER_DATA_DIR": str(data_dir / "bench-tracking")}
        server = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "tracking", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the tracking endpoint did not start") from None
                    time.sleep(0.1)
            progress(f"load: {concurrency} connections for {seconds} s from a second process")
            job = json.dumps({"urls": [u.replace("{port}", str(port)) for u in urls], "seconds": seconds,
                              "concurrency": concurrency})
            loader = subprocess.run([sys.executable, "-c", "from pipeline.bench.tracking import load_main; load_main()"],
                                    input=job, capture_output=True, text=True, check=True)
            latencies = json.loads(loader.stdout)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        progress("checking every hit reached tracking.raw")
        recorded = count_records(settings.kafka, bootstrap, "tracking.raw")
    latencies.sort()
    rate = len(latencies) / seconds
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return {
        "benchmark": "tracking",
        "machine": machine_facts(),
        "settings": {"seconds": seconds, "concurrency": concurrency, "endpoint_processes": 1},
        "requests": len(latencies),
        "recorded_in_tracking_raw": recorded,
        "requests_per_s": round(rate),
        "latency_ms": {"p50": round(statistics.median(latencies), 2), "p90": round(latencies[int(len(latencies) * 0.9) - 1], 2),
                       "p99": round(p99, 2), "max": round(latencies[-1], 2)},
        "summary": {
            "requests_per_s": round(rate), "p99_ms": round(p99, 2), "all_hits_recorded": recorded == len(latencies),
            "meets_target": rate >= TARGET_RPS and p99 < TARGET_P99_MS,
        },
    }

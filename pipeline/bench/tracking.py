"""``threadline bench tracking``: pixel requests/s and latency of one endpoint process.

The endpoint runs as its own process (``threadline tracking``) against a running broker; the
load comes from a second process (an aiohttp client with ``concurrency`` connections) that
requests genuine pixel URLs for ``seconds`` and records every latency.  Every hit must then be
in ``tracking.raw``: the figure counts only hits that were recorded.

``threadline bench tracking --broker-down SECONDS`` (``run_tracking_outage_bench``) kills the
broker under a paced load (``--rate`` requests/s, open loop), keeps it down for SECONDS, brings it
back on the same address, goes on for ``--recovery-s``, and checks that every hit sent meanwhile
reaches ``tracking.raw``.  It records pixel and /health latency (p50/p99/max) during the outage
and the recovery, the spool's peak, the endpoint's peak RSS and the machine's load average.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

from pipeline.bench.common import machine_facts
from pipeline.broker import EmbeddedBroker, create_topics, free_port, kafka_bootstrap, tansu_binary
from pipeline.contracts.topics import TRACKING_RAW
from pipeline.settings import Settings, TrackingSettings
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


def _open_tokens(tracking: TrackingSettings) -> list[str]:
    """Genuine pixel tokens (an hour old) for 1000 mails, the URLs the load requests."""
    keyring = Keyring.from_settings(tracking)
    return [sign_token(TokenPayload("open", "bench", f"<m{n}@bench>", f"r{n}@customer.example", "cmp-1",
                                    issued_at=int(time.time()) - 3600), keyring) for n in range(1000)]


def _start_endpoint(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """``threadline tracking`` on ``port`` (stderr into ``log_path``), once its /health answers."""
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "tracking", "--port", str(port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while True:
        try:
            _get_json(f"http://127.0.0.1:{port}/health", 1)
            return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                _stop_process(server)
                raise RuntimeError(f"the tracking endpoint did not start; see {log_path}") from None
            time.sleep(0.1)


def run_tracking_bench(settings: Settings, *, seconds: float, concurrency: int, data_dir: Path,
                       progress: Callable[[str], None] = lambda _m: None) -> dict:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topic_prefix": prefix})})
    with kafka_bootstrap(settings, data_dir / "bench-broker.log") as bootstrap:
        create_topics(settings.kafka, bootstrap, topics=(TRACKING_RAW,))
        port = free_port()
        env = {**os.environ, "THREADLINE_KAFKA_BOOTSTRAP": bootstrap, "THREADLINE_KAFKA_TOPIC_PREFIX": prefix,
               "THREADLINE_WORKER_DATA_DIR": str(data_dir / "bench-tracking")}
        server = _start_endpoint(port, env, data_dir / "bench-tracking.log")
        try:
            progress(f"load: {concurrency} connections for {seconds} s from a second process")
            urls = [open_url(f"http://127.0.0.1:{port}", token) for token in _open_tokens(settings.tracking)]
            job = json.dumps({"urls": urls, "seconds": seconds, "concurrency": concurrency})
            loader = subprocess.run([sys.executable, "-c", "from pipeline.bench.tracking import load_main; load_main()"],
                                    input=job, capture_output=True, text=True, check=True)
            latencies = json.loads(loader.stdout)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        progress("checking every hit reached tracking.raw")
        recorded = count_records(settings.kafka, bootstrap, TRACKING_RAW)
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


# -- broker-down mode ------------------------------------------------------------------------------
# The endpoint runs against an embedded broker on a port chosen here; the broker is killed, the load
# goes on at a fixed rate for ``outage_s``, then a broker is started on the same port (an empty one:
# Tansu keeps nothing, so topics are created again as a durable cluster would keep them) and the
# load goes on for ``recovery_s`` while the spool drains.  Every hit sent after the kill must then
# be in tracking.raw.

OUTAGE_TARGET_P99_MS = 50.0


def broker_on_port(port: int, log_path: Path, timeout_s: float = 10.0) -> EmbeddedBroker:
    """An embedded broker on ``port`` (``EmbeddedBroker.start`` picks a free one itself)."""
    url = f"tcp://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url",
                                    url, "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited with {process.returncode}; see {log_path}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return EmbeddedBroker(process, port, log_path)
        except OSError:
            time.sleep(0.01)
    process.kill()
    process.wait()
    raise RuntimeError(f"no broker on port {port} within {timeout_s} s; see {log_path}")


def _percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q) - 1))], 2)

    return {"n": len(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p999": at(0.999),
            "max": round(ordered[-1], 2)}


async def _paced(urls: list[str], rate: float, seconds: float, split_s: float, concurrency: int,
                 started_file: str | None = None) -> dict:
    """``rate`` GET requests a second over ``concurrency`` keep-alive connections, each request due
    at its scheduled time whatever the answers do (an open loop: a stalled endpoint shows as
    latency, not as a lower rate).  Latency counts from the scheduled time, so waiting for a free
    connection is included.  Plain asyncio streams rather than an HTTP client library: on a 2-core
    machine the load must cost far less CPU than the endpoint it measures (aiohttp's client took
    about as much as the endpoint, ~0.5 ms a request)."""
    from urllib.parse import urlsplit

    first = urlsplit(urls[0])
    host, port = first.hostname, first.port
    requests = [f"GET {urlsplit(u).path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: Thunderbird/115.0\r\n"
                f"Accept: image/*\r\n\r\n".encode() for u in urls]
    phases: dict[str, list[float]] = {"outage": [], "recovery": []}
    per_10s: dict[int, list[float]] = {}
    statuses: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    due: asyncio.Queue = asyncio.Queue()
    started = loop.time() + 0.2  # the connections are open by then
    late = 0

    def record(status: str, scheduled: float) -> None:
        statuses[status] = statuses.get(status, 0) + 1
        latency = (loop.time() - scheduled) * 1000
        offset = scheduled - started
        phases["outage" if offset < split_s else "recovery"].append(latency)
        per_10s.setdefault(int(offset // 10), []).append(latency)

    async def connection() -> None:
        reader = writer = None
        while True:
            n, scheduled = await due.get()
            try:
                async with asyncio.timeout(10):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write(requests[n % len(requests)])
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    if length:
                        await reader.readexactly(length)
                status = head[9:12].decode()
                if b"connection: close" in head.lower():
                    writer.close()
                    writer = None
            except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                status = type(exc).__name__
                if writer is not None:
                    writer.close()
                writer = None
            record(status, scheduled)
            due.task_done()

    workers = [asyncio.create_task(connection()) for _ in range(concurrency)]
    if started_file:  # the wall-clock time of the first scheduled request, for the caller's clock
        Path(started_file).write_text(repr(time.time() + (started - loop.time())))
    total = int(rate * seconds)
    for n in range(total):
        scheduled = started + n / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.01:
            late += 1
        due.put_nowait((n, scheduled))
    await due.join()
    elapsed = loop.time() - started
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return {"sent": total, "elapsed_s": round(elapsed, 1), "started_late_10ms": late, "statuses": statuses,
            "latency_ms": {phase: _percentiles(values) for phase, values in phases.items()},
            "p99_ms_per_10s": [_percentiles(per_10s[k]).get("p99") for k in sorted(per_10s)]}


def paced_load_main() -> None:
    """Entry of the paced load process: its job as JSON on stdin, its figures as JSON on stdout."""
    job = json.load(sys.stdin)
    json.dump(asyncio.run(_paced(job["urls"], job["rate"], job["seconds"], job["split_s"], job["concurrency"],
                                 started_file=job.get("started_file"))), sys.stdout)


def _get_json(url: str, timeout_s: float = 5.0) -> tuple[dict, float]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body = json.loads(response.read())
    return body, (time.perf_counter() - started) * 1000


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _stop_process(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout_s: float = 60) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_tracking_outage_bench(settings: Settings, *, outage_s: float, rate: float, data_dir: Path,
                              recovery_s: float = 60.0, concurrency: int = 64, drain_timeout_s: float = 600.0,
                              progress: Callable[[str], None] = lambda _m: None) -> dict:
    from pipeline.contracts.avro import AvroCodec, registry_from_settings
    from pipeline.streams.reader import read_topic

    if settings.kafka.bootstrap:
        raise RuntimeError("the broker-down benchmark stops and starts its own embedded broker; "
                           "unset kafka.bootstrap")
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topic_prefix": prefix})})
    broker_port, port = free_port(), free_port()
    bootstrap = f"127.0.0.1:{broker_port}"
    base = f"http://127.0.0.1:{port}"
    urls = [open_url(base, token) for token in _open_tokens(settings.tracking)]
    work = data_dir / f"bench-tracking-outage-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    env = {**os.environ, "THREADLINE_KAFKA_BOOTSTRAP": bootstrap, "THREADLINE_KAFKA_TOPIC_PREFIX": prefix,
           "THREADLINE_WORKER_DATA_DIR": str(work / "endpoint")}
    samples: list[dict] = []
    health_ms: dict[str, list[float]] = {"outage": [], "recovery": []}
    loadavg = [os.getloadavg()[0]]
    broker = server = loader = None
    try:
        broker = broker_on_port(broker_port, work / "broker-1.log")
        create_topics(settings.kafka, bootstrap, topics=(TRACKING_RAW,))
        server = _start_endpoint(port, env, work / "endpoint.log")
        warmup = 100
        for url in urls[:warmup]:
            urllib.request.urlopen(url, timeout=5).read()
        _wait_health(base, lambda s: s["delivered"] == warmup, 30, "the warm-up hits delivered")
        progress(f"broker stopped; load {rate:g} req/s for {outage_s:g} s down + {recovery_s:g} s after it returns")
        broker.stop()  # SIGKILL; the warm-up hits go with it (memory storage)
        _wait_health(base, lambda s: s["broker"] == "down", 30, "the endpoint seeing the broker down")
        cpu_before = _cpu_s(server.pid)

        started_file = work / "load-started"
        job = json.dumps({"urls": urls, "rate": rate, "seconds": outage_s + recovery_s, "split_s": outage_s,
                          "concurrency": concurrency, "started_file": str(started_file)})
        (work / "load-job.json").write_text(job)
        with open(work / "load-job.json", "rb") as job_in, open(work / "load-result.json", "wb") as result_out:
            loader = subprocess.Popen([sys.executable, "-c", "from pipeline.bench.tracking import paced_load_main; "
                                       "paced_load_main()"], stdin=job_in, stdout=result_out)
        deadline = time.monotonic() + 60
        while not started_file.exists():  # the load's clock: the outage phase ends outage_s after it
            if loader.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the load process did not start")
            time.sleep(0.05)
        load_started = time.monotonic() - (time.time() - float(started_file.read_text()))
        restarted_at = None
        while loader.poll() is None:
            now = time.monotonic() - load_started
            if restarted_at is None and now >= outage_s:
                broker = broker_on_port(broker_port, work / "broker-2.log")
                create_topics(settings.kafka, bootstrap, topics=(TRACKING_RAW,))
                restarted_at = round(time.monotonic() - load_started, 1)
                progress(f"broker back after {restarted_at} s")
            phase = "outage" if restarted_at is None else "recovery"
            loadavg.append(os.getloadavg()[0])
            try:
                state, latency = _get_json(base + "/health")
                health_ms[phase].append(latency)
                samples.append({"t": round(now, 1), "rss_mb": round(_rss_mb(server.pid), 1),
                                "load1": loadavg[-1], "health_ms": round(latency, 2), **state})
            except OSError as exc:  # a timeout counts as 5 s
                health_ms[phase].append(5000.0)
                samples.append({"t": round(now, 1), "error": str(exc)})
            if len(samples) % 60 == 0:
                last = samples[-1]
                progress(f"t={last['t']} s: spool {last.get('spool_hits')} hits / {last.get('spool_bytes')} B, "
                         f"queued {last.get('pending_hits')}, delivered {last.get('delivered')}, "
                         f"RSS {last.get('rss_mb')} MB, load {last.get('load1')}")
            time.sleep(max(0.0, 1.0 - (time.monotonic() - load_started - now)))
        if loader.returncode:
            raise RuntimeError(f"the load process failed ({loader.returncode})")
        load = json.loads((work / "load-result.json").read_text())
        if restarted_at is None:
            broker = broker_on_port(broker_port, work / "broker-2.log")
            create_topics(settings.kafka, bootstrap, topics=(TRACKING_RAW,))
        sent = load["sent"]
        progress(f"{sent} hits sent; waiting for the spool to drain")
        drain_started = time.monotonic()
        final = _wait_health(base, lambda s: s["spool_hits"] == 0 and s["pending_hits"] == 0
                             and s["delivered"] >= warmup + sent - s["dropped_at_cap"], drain_timeout_s,
                             "the spool drained")
        drained_after_s = round(time.monotonic() - drain_started, 1)
        rss_peak = _rss_mb(server.pid, "VmHWM")
        endpoint_cpu_s = _cpu_s(server.pid) - cpu_before
        _stop_process(server)
        progress("counting the hits in tracking.raw")
        codec = AvroCodec(registry_from_settings(settings.schema_registry.url))
        records = 0
        event_ids = set()
        for *_, value in read_topic(settings.kafka, bootstrap, TRACKING_RAW, codec, timeout_s=120):
            records += 1
            event_ids.add(value["event_id"])
    finally:
        _stop_process(loader, signal.SIGKILL)
        _stop_process(server)
        if broker is not None:
            broker.stop()
    ok = load["statuses"].get("200", 0)
    outage, recovery = load["latency_ms"]["outage"], load["latency_ms"]["recovery"]
    all_delivered = len(event_ids) == sent and ok == sent
    health = {phase: _percentiles(values) for phase, values in health_ms.items()}
    return {
        "benchmark": "tracking-broker-down",
        "machine": machine_facts(),
        "settings": {"outage_s": outage_s, "recovery_s": recovery_s, "rate": rate, "concurrency": concurrency,
                     "producer_queue_max_messages": settings.tracking.producer_queue_max_messages,
                     "spool_max_bytes": settings.tracking.spool_max_bytes},
        "load": load,
        "health_latency_ms": health,
        "broker_restarted_at_s": restarted_at,
        "drained_after_load_s": drained_after_s,
        "endpoint_final": final,
        "endpoint_rss_peak_mb": round(rss_peak, 1),
        "endpoint_cpu_s_under_load": round(endpoint_cpu_s, 1),
        "spool_peak_bytes": final["spool_peak_bytes"],
        "spool_peak_hits": max((s.get("spool_hits", 0) for s in samples), default=0),
        "machine_load1": {"min": min(loadavg), "mean": round(statistics.mean(loadavg), 2), "max": max(loadavg)},
        "hits_sent": sent,
        "hits_answered_200": ok,
        "records_in_tracking_raw": records,
        "distinct_hits_in_tracking_raw": len(event_ids),
        "samples": samples,
        "summary": {
            "outage_s": outage_s, "rate": rate, "hits_sent": sent,
            "pixel_ms_broker_down": {k: outage.get(k) for k in ("p50", "p99", "max")},
            "pixel_ms_recovery": {k: recovery.get(k) for k in ("p50", "p99", "max")},
            "health_ms_broker_down": {k: health["outage"].get(k) for k in ("p50", "p99", "max")},
            "health_ms_recovery": {k: health["recovery"].get(k) for k in ("p50", "p99", "max")},
            "hits_delivered": len(event_ids), "duplicates": records - len(event_ids),
            "dropped_at_cap": final["dropped_at_cap"], "spool_peak_bytes": final["spool_peak_bytes"],
            "spool_peak_hits": max((s.get("spool_hits", 0) for s in samples), default=0),
            "endpoint_rss_peak_mb": round(rss_peak, 1), "drained_after_load_s": drained_after_s,
            "machine_load1_mean": round(statistics.mean(loadavg), 2), "all_hits_delivered": all_delivered,
            "meets_target": all_delivered and outage.get("p99", 1e9) < OUTAGE_TARGET_P99_MS,
        },
    }


def _wait_health(base: str, condition: Callable[[dict], bool], timeout_s: float, what: str) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state, _ = _get_json(base + "/health")
        if condition(state):
            return state
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s} s; /health says {state}")
        time.sleep(0.5)

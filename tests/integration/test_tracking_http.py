"""The tracking endpoint as a real process on a real socket, with the real broker (or none)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipeline.bench.tracking import broker_on_port
from pipeline.broker import create_topics, free_port
from pipeline.streams.reader import read_topic
from pipeline.tracking.tokens import Keyring, TokenPayload, click_url, open_url, sign_token

pytestmark = pytest.mark.integration


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(_NoRedirect)


def request(url: str, method: str = "GET"):
    try:
        with OPENER.open(urllib.request.Request(url, method=method, headers={"User-Agent": "Thunderbird/115.0"}),
                         timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def start_endpoint(sandbox, data_dir: Path, bootstrap: str,
                   settings_file: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "THREADLINE_SETTINGS": str(settings_file or sandbox.settings_file()),
           "THREADLINE_KAFKA_BOOTSTRAP": bootstrap,
           "THREADLINE_WORKER_DATA_DIR": str(data_dir)}
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "tracking", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=open(data_dir.parent / f"tracking-{port}.log", "wb"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if request(base + "/health")[0] == 200:
                return process, base
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("the tracking endpoint did not come up")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()  # a hung endpoint must not outlive the test
        process.wait(10)
        # Not "from None": in a finally block that would hide the failure that led here.
        raise AssertionError("the tracking endpoint did not stop within 30 s of SIGTERM")


def tokens(settings):
    keyring = Keyring.from_settings(settings.tracking)
    opened = sign_token(TokenPayload("open", "acme", "<m1@acme.test>", "bob@customer.test", "cmp-1",
                                     issued_at=int(time.time()) - 3600), keyring)
    clicked = sign_token(TokenPayload("click", "acme", "<m1@acme.test>", "bob@customer.test", "cmp-1",
                                      link_url="https://shop.example/offer?x=1", issued_at=int(time.time()) - 3600), keyring)
    return opened, clicked


def forged(token: str) -> str:
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1:]


def raw_hits(sandbox, settings) -> list[dict]:
    return [value for _, _, _, value in read_topic(settings.kafka, sandbox.bootstrap, "tracking.raw", sandbox.codec)]


def test_pixel_always_served_clicks_only_to_signed_urls_and_every_hit_recorded(sandbox, tmp_path):
    settings = sandbox.settings()
    opened, clicked = tokens(settings)
    process, base = start_endpoint(sandbox, tmp_path / "data", sandbox.bootstrap)
    try:
        for url, method in [(open_url(base, opened), "GET"), (open_url(base, forged(opened)), "GET"),
                            (open_url(base, opened), "HEAD"), (f"{base}/o/not-a-token.gif", "GET")]:
            status, headers, body = request(url, method)
            assert status == 200 and headers["Content-Type"] == "image/gif", url
            assert "no-cache" in headers["Cache-Control"]
            assert body == (b"" if method == "HEAD" else body) and (method == "HEAD" or body.startswith(b"GIF89a"))

        status, headers, _ = request(click_url(base, clicked))
        assert status == 302 and headers["Location"] == "https://shop.example/offer?x=1"
        for url in [click_url(base, forged(clicked)), click_url(base, opened),  # an open token is no click
                    f"{base}/c/https%3A%2F%2Fevil.example", f"{base}/c/..%2F..%2Fetc"]:
            status, headers, _ = request(url)
            assert status == 404 and "Location" not in headers, url
    finally:
        stop(process)

    deadline = time.monotonic() + 30
    while len(hits := raw_hits(sandbox, settings)) < 9 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(hits) == 9  # every request, genuine or not: the agent dead-letters the forged ones
    assert sorted(h["kind"] for h in hits) == ["click"] * 5 + ["open"] * 4
    assert {h["token"] for h in hits} >= {opened, clicked, forged(opened)}
    assert all(h["user_agent"] == "Thunderbird/115.0" and h["ip"] == "127.0.0.1" for h in hits)

    # The tracking agent classifies the genuine hits and dead-letters the rest.
    worker = sandbox.start_worker()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        events = [v for _, _, _, v in read_topic(settings.kafka, sandbox.bootstrap, "tracking.events", sandbox.codec)]
        dead = [v for _, _, _, v in read_topic(settings.kafka, sandbox.bootstrap, "deadletter", sandbox.codec)]
        if len(events) + len(dead) >= 9:
            break
        assert worker.alive, worker.log_tail()
        time.sleep(1)
    by_kind = sorted((e["kind"], e["is_machine"], e["machine_reason"], e["nth_open"]) for e in events)
    # GET open (human, 1st), HEAD open (machine), genuine click (human; nth_open counts opens).
    assert by_kind == [("click", False, None, 1), ("open", False, None, 1), ("open", True, "head_request", 1)]
    assert all(e["tenant"] == "acme" and e["campaign_id"] == "cmp-1" and e["ip"] == "127.0.0.0" for e in events)
    assert sorted(d["reason"] for d in dead) == ["token_bad_signature", "token_bad_signature", "token_malformed",
                                                 "token_malformed", "token_malformed", "token_wrong_kind"]


def test_hits_survive_a_broker_that_is_down(sandbox, tmp_path):
    settings = sandbox.settings()
    opened, _ = tokens(settings)
    data_dir = tmp_path / "data"
    dead_broker = f"127.0.0.1:{free_port()}"  # nothing listens there
    process, base = start_endpoint(sandbox, data_dir, dead_broker)
    try:
        for _ in range(20):
            started = time.monotonic()
            status, _, body = request(open_url(base, opened))
            assert status == 200 and body.startswith(b"GIF89a")
            assert time.monotonic() - started < 1.0  # answered at once, broker or not
    finally:
        stop(process)  # clean shutdown: what the broker did not take goes to the spool
    spool = data_dir / "tracking-spool.jsonl"
    assert len(spool.read_text().splitlines()) == 20

    process, base = start_endpoint(sandbox, data_dir, sandbox.bootstrap)
    try:
        deadline = time.monotonic() + 30
        while len(raw_hits(sandbox, settings)) < 20 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop(process)
    assert len(raw_hits(sandbox, settings)) == 20
    assert not spool.exists()


# -- broker down: the endpoint keeps answering, spools within its cap, drains when the broker returns --
# The broker runs on a port the test chose (``broker_on_port``), so that "the same broker comes back"
# can be staged; a restarted Tansu has empty memory, so topics are created again, as a durable
# cluster would have kept them.

def health(base: str) -> dict:
    status, _, body = request(base + "/health")
    assert status == 200
    return json.loads(body)


def wait_for(base: str, condition, timeout_s: float, what: str) -> dict:
    deadline = time.monotonic() + timeout_s
    while not condition(state := health(base)):
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s; /health: {state}"
        time.sleep(0.1)
    return state


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


async def _paced_load(base: str, pixel: str, rate: int, seconds: float) -> dict:
    """``rate`` pixel requests a second for ``seconds`` (paced, not closed-loop: a stalled endpoint
    shows as latency, the load does not slow down with it) and a /health request every 100 ms."""
    import aiohttp

    pixels: list[float] = []
    healths: list[float] = []
    states: list[dict] = []
    statuses: Counter = Counter()
    timeout = aiohttp.ClientTimeout(total=10)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), timeout=timeout) as session:
        async def get(url: str, latencies: list[float]) -> bytes:
            started = time.perf_counter()
            try:
                async with session.get(url, headers={"User-Agent": "Thunderbird/115.0"}) as response:
                    body = await response.read()
                    statuses[response.status] += 1
            except asyncio.TimeoutError:
                statuses["timeout"] += 1
                body = b""
            latencies.append((time.perf_counter() - started) * 1000)
            return body

        async def pixel_hit() -> None:
            body = await get(pixel, pixels)
            if body and not body.startswith(b"GIF89a"):
                statuses["not a GIF"] += 1

        async def health_probe() -> None:
            body = await get(base + "/health", healths)
            if body:
                states.append(json.loads(body))

        loop = asyncio.get_running_loop()
        started, tasks = loop.time(), []
        for n in range(int(rate * seconds)):
            delay = started + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(pixel_hit()))
            if n % max(1, rate // 10) == 0:
                tasks.append(asyncio.create_task(health_probe()))
        await asyncio.gather(*tasks)
    return {"pixels": pixels, "healths": healths, "states": states, "statuses": statuses}


def test_endpoint_answers_while_the_broker_is_down_and_delivers_every_hit_when_it_returns(sandbox, tmp_path):
    settings = sandbox.settings()
    opened, _ = tokens(settings)
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = broker_on_port(port, tmp_path / "tansu-1.log")
    create_topics(settings.kafka, bootstrap)
    data_dir = tmp_path / "data"
    # A small in-memory queue, so that this short outage spools to disk as a long one would.
    settings_file = sandbox.settings_file("tracking.toml", extra="[tracking]\nproducer_queue_max_messages = 500\n")
    process, base = start_endpoint(sandbox, data_dir, bootstrap, settings_file)
    try:
        for _ in range(20):
            assert request(open_url(base, opened))[0] == 200
        wait_for(base, lambda s: s["delivered"] == 20 and s["broker"] == "up" and s["status"] == "ok", 30,
                 "the first 20 hits delivered")
        broker.stop()  # SIGKILL; those 20 hits are gone with the broker's memory (Tansu keeps nothing)
        wait_for(base, lambda s: s["broker"] == "down" and s["status"] == "degraded", 15, "the broker seen down")

        rate, seconds = 300, 20
        load = asyncio.run(_paced_load(base, open_url(base, opened), rate, seconds))
        sent = rate * seconds
        # Every pixel and /health request answered 200 (a stalled endpoint shows as "timeout").
        assert load["statuses"] == Counter({200: sent + len(load["healths"])}), load["statuses"]
        pixel_p99, health_p99 = p99(load["pixels"]), p99(load["healths"])
        # A request path that waits for the broker shows as 10 s client timeouts (before this fix /health
        # hung for 8+ minutes).  The bound is loose because CI machines are loaded (150 ms seen here with
        # other test runs on both cores, 583 ms at a load of 7 on 2 cores; 4 ms on an idle machine);
        # 50 ms at 1,000/s for 10 minutes is the benchmark's target (threadline bench tracking
        # --broker-down 600), not this test's.
        print(f"broker down: {sent} pixels, p99 {pixel_p99:.1f} ms (max {max(load['pixels']):.1f}), /health p99 "
              f"{health_p99:.1f} ms, spool peak {max(s['spool_hits'] for s in load['states'])} hits")
        assert pixel_p99 < 2_000 and health_p99 < 2_000, (pixel_p99, health_p99, max(load["pixels"]))
        assert all(s["status"] == "degraded" and s["broker"] == "down" for s in load["states"])
        assert max(s["spool_hits"] for s in load["states"]) > 0  # the queue filled: hits went to disk
        during = health(base)
        assert during["dropped_at_cap"] == 0 and during["delivered"] == 20
        assert during["pending_hits"] <= 500
        # Every hit is somewhere: queued in memory or in the spool.
        assert during["pending_hits"] + during["spool_hits"] == sent, during
        spool_file = data_dir / "tracking-spool.jsonl"
        # On disk within a moment (the spool is a buffered file flushed by the producer thread every step).
        wait_for(base, lambda s: spool_file.stat().st_size == s["spool_bytes"] > 0, 2, "the spool on disk")

        broker = broker_on_port(port, tmp_path / "tansu-2.log")  # the broker comes back, same address
        create_topics(settings.kafka, bootstrap)
        after = wait_for(base, lambda s: s["delivered"] == 20 + sent and s["pending_hits"] == 0
                         and s["spool_hits"] == 0, 60, "every hit delivered after the broker returned")
        assert after["status"] == "ok" and after["broker"] == "up" and after["spool_bytes"] == 0
        assert after["drained"] >= during["spool_hits"] and after["dropped_at_cap"] == 0
        assert spool_file.stat().st_size == 0
        hits = [value for _, _, _, value in read_topic(settings.kafka, bootstrap, "tracking.raw", sandbox.codec)]
        assert len({hit["event_id"] for hit in hits}) == sent  # each request had its own event id
        assert all(hit["token"] == opened and hit["kind"] == "open" for hit in hits)
    finally:
        stop(process)
        broker.stop()
    assert not (data_dir / "tracking-spool.jsonl").exists()


def test_past_the_spool_cap_hits_are_dropped_counted_and_reported(sandbox, tmp_path):
    settings = sandbox.settings()
    opened, _ = tokens(settings)
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"  # no broker there yet
    data_dir = tmp_path / "data"
    cap = 20_000  # about 30 hits
    settings_file = sandbox.settings_file("tracking.toml", extra=f"[tracking]\nproducer_queue_max_messages = 50\n"
                                                                 f"spool_max_bytes = {cap}\n")
    process, base = start_endpoint(sandbox, data_dir, bootstrap, settings_file)
    log_path = data_dir.parent / f"tracking-{base.rsplit(':', 1)[1]}.log"
    broker = None
    try:
        sent = 300
        for _ in range(sent):
            assert request(open_url(base, opened))[0] == 200
        state = wait_for(base, lambda s: s["broker"] == "down", 15, "the broker seen down")
        assert state["status"] == "degraded" and state["delivered"] == 0
        assert state["pending_hits"] == 50 and 0 < state["spool_hits"] < sent - 50
        assert state["dropped_at_cap"] == sent - 50 - state["spool_hits"]
        assert state["spool_max_bytes"] == cap and state["spool_bytes"] <= cap
        assert (data_dir / "tracking-spool.jsonl").stat().st_size <= cap
        wait_for(base, lambda s: "spool full" in log_path.read_text(), 5, "the drops logged")
        assert log_path.read_text().count("spool full") == 1  # once per interval, not once per hit

        kept = sent - state["dropped_at_cap"]
        broker = broker_on_port(port, tmp_path / "tansu.log")
        create_topics(settings.kafka, bootstrap)
        after = wait_for(base, lambda s: s["delivered"] == kept and s["spool_hits"] == 0 and s["pending_hits"] == 0,
                         60, "every hit that was not dropped delivered")
        assert after["dropped_at_cap"] == state["dropped_at_cap"] and after["status"] == "ok"
        hits = [value for _, _, _, value in read_topic(settings.kafka, bootstrap, "tracking.raw", sandbox.codec)]
        assert len({hit["event_id"] for hit in hits}) == kept
    finally:
        stop(process)
        if broker is not None:
            broker.stop()


def test_health_says_ok_again_when_the_broker_returns_without_any_hit(sandbox, tmp_path):
    settings = sandbox.settings()
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"  # no broker there yet
    process, base = start_endpoint(sandbox, tmp_path / "data", bootstrap)
    broker = None
    try:
        state = wait_for(base, lambda s: s["broker"] == "down", 15, "the missing broker seen")
        assert state["status"] == "degraded" and state["last_error"]
        broker = broker_on_port(port, tmp_path / "tansu.log")
        create_topics(settings.kafka, bootstrap, topics=("tracking.raw",))
        # No hit is queued to tell, so the endpoint asks the broker (every second) itself.
        state = wait_for(base, lambda s: s["broker"] == "up", 30, "the broker seen back")
        assert state["status"] == "ok" and state["delivered"] == 0
    finally:
        stop(process)
        if broker is not None:
            broker.stop()


def test_a_spool_stopped_in_the_middle_of_draining_is_delivered_by_the_next_run(sandbox, tmp_path):
    """The endpoint's HitSpool in this process, with a real broker: hits queued, spooled, partly
    drained, then a clean stop; the next run delivers exactly the rest."""
    from pipeline.gateways.tracking_http import HitSpool

    settings = sandbox.settings(sandbox.settings_file("tracking.toml",
                                                      extra="[tracking]\nproducer_queue_max_messages = 10\n"))
    opened, _ = tokens(settings)
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"  # no broker there yet
    path = tmp_path / "tracking-spool.jsonl"

    def hit(n: int) -> dict:
        return {"event_id": f"e{n:03d}", "kind": "open", "token": opened, "received_at": datetime.now(timezone.utc),
                "method": "GET", "ip": "127.0.0.1", "user_agent": "Thunderbird/115.0", "headers": {}}

    first = HitSpool(settings, bootstrap, sandbox.codec, path)
    for n in range(100):
        first.add(hit(n), "acme")
    queued, spooled = first.pending, first.spool_hits
    # The queue holds about 10 (librdkafka counts loosely); the rest went to the file.
    assert queued + spooled == 100 and 10 <= queued <= 15, (queued, spooled)
    broker = broker_on_port(port, tmp_path / "tansu.log")
    try:
        create_topics(settings.kafka, bootstrap, topics=("tracking.raw",))
        first.producer.flush(30)
        assert first.delivered == queued
        assert first._drain(5) == 5  # five lines handed back, then the endpoint stops
        first.close()
        rest = spooled - 5
        assert first.delivered == queued + 5 and first.spool_hits == rest
        assert len(path.read_bytes().splitlines()) == rest  # only what was not handed back is kept

        second = HitSpool(settings, bootstrap, sandbox.codec, path)
        assert second.spool_hits == rest
        second.start()
        deadline = time.monotonic() + 30
        while (second.spool_hits or second.pending) and time.monotonic() < deadline:
            time.sleep(0.1)
        second.close()
        assert second.delivered == rest and second.status()["status"] == "ok"
        assert not path.exists()
        hits = [value["event_id"] for _, _, _, value in read_topic(settings.kafka, bootstrap, "tracking.raw",
                                                                   sandbox.codec)]
        assert sorted(hits) == [f"e{n:03d}" for n in range(100)]  # each exactly once
    finally:
        broker.stop()

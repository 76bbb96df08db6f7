"""The tracking endpoint as a real process on a real socket, with the real broker (or none)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.broker import free_port
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


def start_endpoint(sandbox, data_dir: Path, bootstrap: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "THREADLINE_SETTINGS": str(sandbox.settings_file()), "THREADLINE_KAFKA_BOOTSTRAP": bootstrap,
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
    process.wait(30)


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

"""One-click unsubscribe: the token kind, the suppression store, and the endpoint's /u/ routes
(aiohttp in process; a real hit spool with no broker behind it)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pipeline.broker import free_port
from pipeline.campaigns.suppression import JsonlSuppressionStore, MemorySuppressionStore
from pipeline.contracts.avro import AvroCodec, registry_from_settings
from pipeline.settings import Settings, TrackingSettings, WorkerSettings
from pipeline.gateways.tracking_http import HitSpool, build_app
from pipeline.tracking.tokens import (
    Keyring, TokenError, TokenPayload, click_url, sign_token, token_from_path, unsubscribe_url, verify_token,
    verify_with_settings,
)

TRACKING = TrackingSettings(keys={"k1": "a-test-secret-0123456789"}, current_key_id="k1", pixel_max_age_days=1,
                            click_max_age_days=1)
KEYS = Keyring.from_settings(TRACKING)
T = 1_772_442_000
UNSUB = TokenPayload("unsubscribe", "acme", "<m1@ours.example>", "Ann@Customer.example", "spring-26", issued_at=T)


def forged(token: str) -> str:
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1:]


def test_unsubscribe_token_kind():
    token = sign_token(UNSUB, KEYS)
    assert verify_token(token, KEYS) == UNSUB
    # Its own maximum age (730 days by default), although opens and clicks are limited to a day here.
    assert verify_with_settings(token, TRACKING, now=T + 729 * 86400, expect_kind="unsubscribe") == UNSUB
    with pytest.raises(TokenError) as caught:
        verify_with_settings(token, TRACKING, now=T + 731 * 86400, expect_kind="unsubscribe")
    assert caught.value.reason == "expired"
    with pytest.raises(TokenError) as caught:
        verify_token(token, KEYS, expect_kind="click")
    assert caught.value.reason == "wrong_kind"
    click = sign_token(TokenPayload("click", "acme", "<m1@ours.example>", "a@b.example", link_url="https://x.example/"),
                       KEYS)
    with pytest.raises(TokenError) as caught:
        verify_with_settings(click, TRACKING, expect_kind="unsubscribe")
    assert caught.value.reason == "wrong_kind"
    with pytest.raises(ValueError, match="needs link_url"):
        TokenPayload("unsubscribe", "acme", "m", "r", link_url="https://x.example/")
    assert token_from_path(f"/u/{token}") == ("unsubscribe", token)
    assert unsubscribe_url("https://t.example/track/", token) == f"https://t.example/track/u/{token}"
    assert token_from_path("/u/a b") is None


def test_jsonl_store_is_per_tenant_case_insensitive_and_shared(tmp_path):
    path = tmp_path / "s.jsonl"
    writer, reader = JsonlSuppressionStore(path), JsonlSuppressionStore(path)
    assert not reader.is_suppressed("acme", "ann@customer.example")
    assert writer.add("acme", "Ann@Customer.example", campaign_id="c1") is True
    assert writer.add("acme", "ann@customer.example") is False
    assert reader.is_suppressed("acme", "ANN@customer.example")  # sees the other's append
    assert not reader.is_suppressed("other", "ann@customer.example")
    with open(path, "ab") as handle:
        handle.write(b'{"tenant": "acme", "addr')  # a torn line of a crash
    assert writer.add("acme", "bob@customer.example")  # still readable after it
    assert JsonlSuppressionStore(path).addresses("acme") == {"ann@customer.example", "bob@customer.example"}
    memory = MemorySuppressionStore()
    assert memory.add("acme", "A@b.example") and memory.is_suppressed("acme", "a@B.example")


@pytest.mark.integration  # opens sockets on loopback
def test_endpoint_get_confirms_post_unsubscribes_forged_is_404(tmp_path):
    settings = Settings(tracking=TRACKING, worker=WorkerSettings(data_dir=tmp_path))
    token = sign_token(dataclasses.replace(UNSUB, issued_at=int(time.time()) - 86400 * 2), KEYS)  # older than a day
    # A real spool whose broker port is closed: unsubscribes must never reach it.
    spool = HitSpool(settings, f"127.0.0.1:{free_port()}", AvroCodec(registry_from_settings(None)),
                     tmp_path / "spool.jsonl")

    async def scenario():
        async with TestClient(TestServer(build_app(settings, spool))) as client:
            store = JsonlSuppressionStore.from_settings(settings)
            for method in ("GET", "HEAD"):  # scanners prefetch: never unsubscribes
                response = await client.request(method, f"/u/{token}")
                assert response.status == 200
            page = await (await client.get(f"/u/{token}")).text()
            assert '<form method="post">' in page and "Ann@Customer.example" in page
            assert "no-cache" in response.headers["Cache-Control"]
            assert not store.is_suppressed("acme", "ann@customer.example")

            for bad in (forged(token), "not-a-token", sign_token(
                    TokenPayload("open", "acme", "<m1@ours.example>", "ann@customer.example"), KEYS)):
                assert (await client.post(f"/u/{bad}", data="List-Unsubscribe=One-Click")).status == 404
                assert (await client.get(f"/u/{bad}")).status == 404
            assert (await client.post(click_url("", token), data="x")).status in (404, 405)
            assert not store.is_suppressed("acme", "ann@customer.example")

            response = await client.post(f"/u/{token}", data="List-Unsubscribe=One-Click",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert response.status == 200 and "gets no more campaign mail" in await response.text()
            assert store.is_suppressed("acme", "ann@customer.example")
            assert (await client.post(f"/u/{token}")).status == 200  # again: still fine, one line
        return store

    store = asyncio.run(scenario())
    assert len(store.path.read_text().splitlines()) == 1
    status = spool.status()  # unsubscribes are not tracking hits
    assert (status["pending_hits"], status["spooled"], status["delivered"]) == (0, 0, 0)

"""Keys and expiry at the real endpoint (aiohttp on a real socket, hits to the real broker):
rotation (docs/tracking.md, "Keys"), forged development-key tokens, expired links per kind, and
the endpoint refusing to start with an unsafe key outside the loopback demo."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pipeline.broker import free_port
from pipeline.campaigns.suppression import JsonlSuppressionStore
from pipeline.settings import DEVELOPMENT_TRACKING_KEY, TrackingSettings
from pipeline.gateways.tracking_http import HitSpool, UnsafeTrackingKeys, build_app, serve
from pipeline.tracking.mark import mark_message
from pipeline.tracking.tokens import Keyring, TokenError, TokenPayload, sign_token, verify_token

pytestmark = pytest.mark.integration

OLD = "vD3kQ9-xLm2RtZ8wYp5Nc7Hs1Jf4Gb6A"  # 2026a
NEW = "Tq8Lr2-Zm5Wx9Kp3Vb7Nc1Hd4Js6Fg0Y"  # 2026b
URL = "https://shop.example/spring?code=B-2"
DAY = 86400


def with_keys(settings, keys: dict[str, str], current: str):
    return settings.model_copy(update={"tracking": settings.tracking.model_copy(
        update={"keys": keys, "current_key_id": current})})


def click(keyring, *, url=URL, age_days=0.0):
    return sign_token(TokenPayload("click", "acme", "<m1@ours.test>", "bob@customer.test", "spring-26", link_url=url,
                                   issued_at=int(time.time() - age_days * DAY)), keyring)


def unsubscribe(keyring, recipient="bob@customer.test", *, age_days=0.0):
    return sign_token(TokenPayload("unsubscribe", "acme", "<m1@ours.test>", recipient, "spring-26",
                                   issued_at=int(time.time() - age_days * DAY)), keyring)


def run_endpoint(sandbox, settings, tmp_path, scenario):
    """``scenario(client, store)`` against build_app on a real socket; the spool's broker is real."""
    spool = HitSpool(settings, sandbox.bootstrap, sandbox.codec, tmp_path / f"spool-{time.monotonic_ns()}.jsonl")

    async def run():
        async with TestClient(TestServer(build_app(settings, spool))) as client:
            await scenario(client, JsonlSuppressionStore.from_settings(settings))

    asyncio.run(run())


async def status_and_location(client, path):
    response = await client.get(path, allow_redirects=False)
    return response.status, response.headers.get("Location")


def test_rotation_old_tokens_work_while_listed_new_ones_use_the_new_key_removal_refuses_old(sandbox, tmp_path):
    base = sandbox.settings().model_copy(update={"worker": sandbox.settings().worker.model_copy(
        update={"data_dir": tmp_path / "data"})})
    before = with_keys(base, {"2026a": OLD}, "2026a")
    old_click, old_unsub = click(Keyring.from_settings(before.tracking)), unsubscribe(
        Keyring.from_settings(before.tracking), "ann@customer.test")

    # Step 1 and 2: add the new key, switch current_key_id to it; the old one stays listed.
    during = with_keys(base, {"2026a": OLD, "2026b": NEW}, "2026b")
    marked = mark_message(b"From: a@ours.test\r\nTo: bob@customer.test\r\nMessage-ID: <m2@ours.test>\r\n"
                          b"Content-Type: text/html\r\n\r\n<a href=\"https://shop.example/new\">new</a>\r\n",
                          during.tracking, tenant="acme", recipient="bob@customer.test", campaign_id="spring-26")
    html = email.message_from_bytes(marked.data, policy=email.policy.default).get_content()
    new_click = re.search(r"/c/([A-Za-z0-9_-]+)", html).group(1)  # how new mail is signed: the real marker
    assert verify_token(new_click, {"2026b": NEW}).link_url == "https://shop.example/new"  # signed with 2026b...
    with pytest.raises(TokenError) as caught:
        verify_token(new_click, {"2026a": OLD})
    assert caught.value.reason == "unknown_key"  # ...and not with 2026a

    async def while_both_are_listed(client, store):
        assert await status_and_location(client, f"/c/{old_click}") == (302, URL)
        assert await status_and_location(client, f"/c/{new_click}") == (302, "https://shop.example/new")
        assert (await client.get(f"/u/{old_unsub}")).status == 200

    run_endpoint(sandbox, during, tmp_path, while_both_are_listed)

    # Step 3, after the longest max age: the old key goes; its tokens are refused, the new ones work.
    after = with_keys(base, {"2026b": NEW}, "2026b")

    async def after_removal(client, store):
        assert await status_and_location(client, f"/c/{old_click}") == (404, None)
        assert (await client.post(f"/u/{old_unsub}", data="List-Unsubscribe=One-Click")).status == 404
        assert not store.is_suppressed("acme", "ann@customer.test")
        assert await status_and_location(client, f"/c/{new_click}") == (302, "https://shop.example/new")

    run_endpoint(sandbox, after, tmp_path, after_removal)


def test_forged_development_key_tokens_and_expired_links_are_refused(sandbox, tmp_path):
    base = sandbox.settings().model_copy(update={"worker": sandbox.settings().worker.model_copy(
        update={"data_dir": tmp_path / "data"})})
    settings = with_keys(base, {"2026b": NEW}, "2026b")
    real = Keyring.from_settings(settings.tracking)
    # What an attacker can sign: the public key, under its own id and under the real key's id.
    forgers = [Keyring.of({"dev": DEVELOPMENT_TRACKING_KEY}, "dev"), Keyring.of({"2026b": DEVELOPMENT_TRACKING_KEY}, "2026b")]

    async def scenario(client, store):
        for forger in forgers:
            assert await status_and_location(client, f"/c/{click(forger, url='https://evil.example/')}") == (404, None)
            forged_unsub = unsubscribe(forger, "victim@customer.test")
            assert (await client.post(f"/u/{forged_unsub}", data="List-Unsubscribe=One-Click")).status == 404
            assert (await client.get(f"/u/{forged_unsub}")).status == 404
        assert not store.is_suppressed("acme", "victim@customer.test")

        # Clicks: 365 days by default. Past it a page says so; the embedded URL is never followed.
        assert await status_and_location(client, f"/c/{click(real, age_days=364)}") == (302, URL)
        response = await client.get(f"/c/{click(real, age_days=366)}", allow_redirects=False)
        page = await response.text()
        assert response.status == 410 and "Location" not in response.headers
        assert "expired" in page and "365 days" in page and "shop.example" not in page
        # 1970 is long past every maximum age.
        assert await status_and_location(client, f"/c/{click(real, age_days=time.time() / DAY)}") == (410, None)

        # Unsubscribes: 730 days. An expired one shows a page and unsubscribes nobody, GET or POST.
        expired = unsubscribe(real, "old@customer.test", age_days=731)
        for response in (await client.get(f"/u/{expired}"),
                         await client.post(f"/u/{expired}", data="List-Unsubscribe=One-Click")):
            page = await response.text()
            assert response.status == 410 and "expired" in page and "730 days" in page and "<form" not in page
        assert not store.is_suppressed("acme", "old@customer.test")
        late = unsubscribe(real, "late@customer.test", age_days=700)
        assert (await client.post(f"/u/{late}", data="List-Unsubscribe=One-Click")).status == 200
        assert store.is_suppressed("acme", "late@customer.test")

        # Pixels are always served, expired or forged (the agent dead-letters those hits).
        assert (await client.get(f"/o/{click(forgers[0])}.gif")).status == 200

    run_endpoint(sandbox, settings, tmp_path, scenario)


def test_endpoint_refuses_to_start_with_an_unsafe_key_outside_the_demo(sandbox, tmp_path):
    demo = sandbox.settings()  # the development key, the session's broker on 127.0.0.1
    public = demo.model_copy(update={"tracking": TrackingSettings(base_url="https://track.example.com")})
    weak = with_keys(public, {"k1": "only-twenty-four-chars!!"}, "k1")
    port = free_port()
    for settings, host, says in [(public, "127.0.0.1", "tracking.base_url https://track.example.com"),
                                 (demo, "0.0.0.0", "it listens on 0.0.0.0"),
                                 (weak, "127.0.0.1", "key 'k1' is shorter than 32 characters")]:
        with pytest.raises(UnsafeTrackingKeys, match="threadline tracking refuses to run") as caught:
            serve(settings, sandbox.bootstrap, sandbox.codec, host=host, port=port, spool_path=tmp_path / "spool.jsonl")
        assert says in str(caught.value) and "secrets.token_urlsafe(32)" in str(caught.value)
    assert not (tmp_path / "spool.jsonl").exists()  # refused before the spool (or a socket) was opened

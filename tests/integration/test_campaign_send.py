"""A campaign end to end: a real SMTP server (aiosmtpd), a real DNS server on a local socket, the
tracking endpoint as a process; a one-click unsubscribe there is honoured by the next send."""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest
from aiosmtpd.controller import Controller

from pipeline.broker import free_port
from pipeline.campaigns.recipients import DnsResolver, SmtpProbe
from pipeline.campaigns.send import send_campaign
from pipeline.campaigns.suppression import JsonlSuppressionStore
from pipeline.tracking.tokens import Keyring, verify_token

pytestmark = pytest.mark.integration

TEMPLATE = '''subject = "{{ first_name }}, our spring offers"
text = """Hello {{ first_name }},

your code {{ code }} is good at https://shop.example/spring?code={{ code }} until May.
Unsubscribe: {{ unsubscribe_url }}
"""
html = """<html><body><p>Hello {{ first_name }},</p>
<p><a href="https://shop.example/spring?code={{ code }}">Your code {{ code }}</a></p>
</body></html>"""
'''
RECIPIENTS = """email,first_name,code
ann@customer.test,Ann,A-1
bob@customer.test,Bob,B-2
cid@customer.test,Cid,C-3
ghost@customer.test,Ghost,G-4
dan@nowhere.test,Dan,D-5
eve@slow.test,Eve,E-6
not-an-address,X,X-7
"""


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address == "ghost@customer.test":
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


class LocalDns:
    """Answers MX for customer.test, NXDOMAIN for other names, nothing at all for slow.test."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            if name == "slow.test":
                continue
            response = dns.message.make_response(query)
            if name == "customer.test":
                if question.rdtype == dns.rdatatype.MX:
                    response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "MX", "10 127.0.0.1."))
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), peer)

    def resolver(self) -> DnsResolver:
        inner = dns.resolver.Resolver(configure=False)
        inner.nameservers = ["127.0.0.1"]
        inner.port = self.port
        return DnsResolver(inner)


def http(url: str, method: str = "GET", data: bytes | None = None):
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(url, data=data, method=method, headers={"User-Agent": "Thunderbird/115.0"})
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def start_endpoint(settings_file, data_dir, bootstrap, log_path):
    port = free_port()
    env = {**os.environ, "THREADLINE_SETTINGS": str(settings_file), "THREADLINE_KAFKA_BOOTSTRAP": bootstrap,
           "THREADLINE_WORKER_DATA_DIR": str(data_dir)}
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "tracking", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http(base + "/health")[0] == 200:
                return process, base
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the tracking endpoint did not come up: {log_path.read_text()[-2000:]}")


def test_campaign_is_sent_tracked_and_an_unsubscribe_is_honoured_next_time(sandbox, tmp_path):
    data_dir = tmp_path / "data"
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    local_dns = LocalDns()
    process, base = start_endpoint(sandbox.settings_file(), data_dir, sandbox.bootstrap, tmp_path / "tracking.log")
    try:
        settings = sandbox.settings(sandbox.settings_file("campaign.toml", extra=f"""data_dir = "{data_dir}"

[tracking]
base_url = "{base}"

[campaigns]
smtp = {{ host = "127.0.0.1", port = {smtp.port} }}
sender = "news@ours.test"
sender_name = "Ours News"
rate_per_s = 20
mx_timeout_s = 0.5
skip_on_mx_timeout = true
smtp_probe = true
"""))
        (tmp_path / "spring.toml").write_text(TEMPLATE)
        (tmp_path / "r.csv").write_text(RECIPIENTS)

        def send(campaign_id: str):
            return send_campaign(settings, campaign_id, tmp_path / "spring.toml", tmp_path / "r.csv", tenant="acme",
                                 resolver=local_dns.resolver(),
                                 probe=SmtpProbe("news@ours.test", port=smtp.port, timeout=5))

        started = time.monotonic()
        report = send("spring-26")
        assert report.counts == {"sent": 3, "smtp_rejected": 1, "nxdomain": 1, "mx_timeout": 1, "syntax": 1}
        assert time.monotonic() - started >= 2 / 20  # rate limited: 3 mails at 20/s
        assert sorted(rcpt for rcpt, _ in inbox.messages) == [["ann@customer.test"], ["bob@customer.test"],
                                                              ["cid@customer.test"]]

        keys = Keyring.from_settings(settings.tracking)
        mails = {rcpt[0]: email.message_from_bytes(raw, policy=email.policy.default) for rcpt, raw in inbox.messages}
        bob = mails["bob@customer.test"]
        assert bob["Subject"] == "Bob, our spring offers" and bob["From"] == "Ours News <news@ours.test>"
        text = bob.get_body(("plain",)).get_content()
        html = bob.get_body(("html",)).get_content()
        assert "Hello Bob," in text and "your code B-2" in text and "Hello Bob," in html
        pixel = re.search(re.escape(base) + r"/o/([A-Za-z0-9_-]+)\.gif", html)
        assert verify_token(pixel.group(1), keys, expect_kind="open").recipient == "bob@customer.test"
        clicks = re.findall(re.escape(base) + r"/c/[A-Za-z0-9_-]+", text + html)
        assert len(clicks) == 2 and "https://shop.example" not in text + html
        status, headers, _ = http(clicks[0])  # the real endpoint redirects to the signed link
        assert status == 302 and headers["Location"] == "https://shop.example/spring?code=B-2"

        assert bob["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        link = re.fullmatch(r"<(" + re.escape(base) + r"/u/[A-Za-z0-9_-]+)>", bob["List-Unsubscribe"]).group(1)
        assert f"Unsubscribe: {link}" in text
        assert all(m["List-Unsubscribe"] and m["List-Unsubscribe"] != bob["List-Unsubscribe"]
                   for r, m in mails.items() if r != "bob@customer.test")

        store = JsonlSuppressionStore.from_settings(settings)
        status, _, page = http(link)  # a GET (a scanner's prefetch) only shows the form
        assert status == 200 and 'method="post"' in page
        assert not store.is_suppressed("acme", "bob@customer.test")
        forged = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
        assert http(forged, "POST", b"List-Unsubscribe=One-Click")[0] == 404
        status, _, page = http(link, "POST", b"List-Unsubscribe=One-Click")  # what the mail client sends
        assert status == 200 and "bob@customer.test" in page
        assert store.is_suppressed("acme", "bob@customer.test")
        assert (data_dir / "suppressions.jsonl").is_file()

        inbox.messages.clear()
        again = send("summer-26")
        assert again.counts == {"sent": 2, "unsubscribed": 1, "smtp_rejected": 1, "nxdomain": 1, "mx_timeout": 1,
                                "syntax": 1}
        assert (2 + 1, "bob@customer.test", "unsubscribed") in again.skipped
        assert sorted(rcpt[0] for rcpt, _ in inbox.messages) == ["ann@customer.test", "cid@customer.test"]
        # Rerunning the first campaign sends nothing: everyone reachable got it already.
        rerun = send("spring-26").counts
        assert rerun["already_sent"] == 3 and "sent" not in rerun
        assert inbox.messages and len(inbox.messages) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        smtp.stop()
        local_dns.sock.close()

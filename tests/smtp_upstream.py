"""The fake smarthost of the relay's tests (tests/gateways/smtp and tests/integration): a real
aiosmtpd server, so the relay talks SMTP to it over a socket."""

from __future__ import annotations

from aiosmtpd.controller import Controller

from pipeline.broker import free_port


class Upstream:
    """A real SMTP server on loopback that keeps what it accepts, whose RCPT answers may be chosen
    per address; it stops and starts again on one port."""

    def __init__(self, port: int | None = None, answers: dict[str, str] | None = None) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.answers = answers or {}
        self.port = port or free_port()
        self.controller: Controller | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        answer = self.answers.get(address)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"

    def start(self) -> None:  # a stopped Controller cannot start again: a new one, same port
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

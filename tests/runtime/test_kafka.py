"""Kafka security settings reach every client: confluent-kafka configs and the Faust app."""

import ssl

import faust

from pipeline.settings import load_settings
from pipeline.runtime.kafka import client_config, faust_credentials, producer_config


def _settings(**environ):
    return load_settings(None, environ={f"THREADLINE_KAFKA_{k.upper()}": v for k, v in environ.items()})


def test_plaintext_by_default():
    settings = _settings()
    assert "security.protocol" not in client_config(settings.kafka, "b:9092")
    assert faust_credentials(settings.kafka) is None


def test_sasl_ssl_reaches_confluent_clients_and_faust():
    settings = _settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="svc",
                         sasl_password="pw")
    for config in (client_config(settings.kafka, "b:9092"), producer_config(settings.kafka, "b:9092")):
        assert (config["security.protocol"], config["sasl.mechanism"], config["sasl.username"],
                config["sasl.password"]) == ("SASL_SSL", "SCRAM-SHA-512", "svc", "pw")
    credentials = faust_credentials(settings.kafka)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "svc" and credentials.password == "pw"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)


def test_ssl_only_gives_faust_an_ssl_context():
    settings = _settings(security_protocol="SSL")
    assert isinstance(faust_credentials(settings.kafka), faust.SSLCredentials)

"""`threadline campaign create` and `threadline convert` write their records to the real broker."""

from __future__ import annotations

import pytest

from pipeline.cli.main import main
from pipeline.streams.reader import read_topic

pytestmark = pytest.mark.integration


def test_campaign_and_conversion_records_reach_their_topics(sandbox, monkeypatch):
    monkeypatch.setenv("THREADLINE_KAFKA_BOOTSTRAP", sandbox.bootstrap)
    settings_file = str(sandbox.settings_file())
    assert main(["--settings", settings_file, "campaign", "create", "--campaign", "spring", "--name", "Spring sale",
                 "--cost", "1200", "--tenant", "acme"]) == 0
    assert main(["--settings", settings_file, "convert", "--campaign", "spring", "--revenue", "99.5",
                 "--recipient", "bob@customer.test", "--tenant", "acme"]) == 0
    assert main(["--settings", settings_file, "convert", "--campaign", "spring", "--revenue", "-1"]) == 2
    settings = sandbox.settings()
    campaigns = [v for _, _, _, v in read_topic(settings.kafka, sandbox.bootstrap, "campaigns", sandbox.codec)]
    conversions = [v for _, _, _, v in read_topic(settings.kafka, sandbox.bootstrap, "conversions", sandbox.codec)]
    assert [(c["campaign_id"], c["name"], c["cost"], c["tenant"]) for c in campaigns] == [
        ("spring", "Spring sale", 1200.0, "acme")]
    assert [(c["campaign_id"], c["revenue"], c["recipient"]) for c in conversions] == [
        ("spring", 99.5, "bob@customer.test")]

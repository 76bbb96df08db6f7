"""``threadline bench clickhouse``: sink insert rate, and every dashboard query's latency at scale.

* Insert rate: seeded records (real engine decisions over synthetic mail, campaigns, tracking
  events) go through the sink's own row building and inserts, batch by batch.
* Query latency: the tables are filled to ``mails`` correlated mails (default 10M) by
  ClickHouse itself (``INSERT ... SELECT FROM numbers(N)``: generating 10M rows in Python would
  measure Python), with responses, tracking events, conversions and escalations in proportion;
  then every panel of every dashboard runs ``repeat`` times with the Grafana macros expanded,
  over the whole time range, and the median and worst latency are reported.
"""

from __future__ import annotations

import shutil
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pipeline.analytics.dashboards import DASHBOARDS
from pipeline.analytics.panels import default_variables, panel_sql
from pipeline.analytics.seed import load_records, seed_records
from pipeline.bench.common import machine_facts
from pipeline.settings import ClickHouseSettings, Settings
from pipeline.sinks.clickhouse import ClickHouseStore

TARGET_MS = 200
TENANTS = 10
_START = "toDateTime64('2026-01-01 00:00:00', 3, 'UTC')"
_METHODS = "['None', 'InReplyTo', 'InReplyTo', 'InReplyTo', 'SmartMatching', 'TrackingToken', 'ConversationIndex']"
_CODES = "[0, 3, 3, 3, 6, 4, 5]"

# Fill statements, {n} = correlated mails; every row is a function of `number`, so runs repeat.
_FILL = {
    "mail_correlated": f"""
INSERT INTO {{db}}.mail_correlated (event_id, tenant, generation, settings_fingerprint, message_id, conversation_id,
    parent_message_id, regarding, method, method_name, mail_type, direction, event_time, tracking_token,
    candidate_count, evidence, subject, from_addr, `to`, cc, bcc, mailbox, source_partition, source_offset,
    _topic_partition, _topic_offset)
SELECT hex(MD5(toString(number))), concat('tenant-', toString(number % {TENANTS} + 1)), 0, 'bench',
    concat('<m', toString(number), '@bench>'), concat('c-', toString(intDiv(number, 5))),
    if(number % 5 = 0, NULL, concat('<m', toString(number - 1), '@bench>')), NULL,
    {_CODES}[number % 7 + 1], {_METHODS}[number % 7 + 1], if(number % 5 = 0, 'new', 'reply'),
    if(number % 2 = 0, 'in', 'out'), {_START} + toIntervalMillisecond(number * 500), NULL, 1, '{{}}',
    concat('Subject ', toString(intDiv(number, 5))), concat('c', toString(number % 50000), '@customer.example'),
    ['agent@support.example'], [], [], if(number % 3 = 0, 'sales', 'support'), 0, number, 0, number
FROM numbers({{n}})""",
    "mail_responses": f"""
INSERT INTO {{db}}.mail_responses (event_id, tenant, generation, message_id, answers_message_id, conversation_id,
    regarding, responder, mailbox, inbound_time, response_time, seconds, business_seconds, _topic_partition, _topic_offset)
SELECT hex(MD5(concat('r', toString(number)))), concat('tenant-', toString(2 * number % {TENANTS} + 1)), 0,
    concat('<m', toString(2 * number + 1), '@bench>'), concat('<m', toString(2 * number), '@bench>'),
    concat('c-', toString(intDiv(2 * number, 5))), NULL, concat('agent', toString(number % 40), '@support.example'),
    if(number % 3 = 0, 'sales', 'support'), {_START} + toIntervalMillisecond(2 * number * 500),
    {_START} + toIntervalMillisecond(2 * number * 500) + toIntervalSecond(60 + cityHash64(number) % 172800),
    60 + cityHash64(number) % 172800, NULL, 0, number
FROM numbers(intDiv({{n}} * 2, 5))""",
    "tracking_events": f"""
INSERT INTO {{db}}.tracking_events (event_id, tenant, kind, message_id, recipient, campaign_id, link_url, event_time,
    ip, reverse_dns, user_agent_family, is_machine, machine_reason, nth_open, first_open_time, probably_forwarded,
    _topic_partition, _topic_offset)
SELECT hex(MD5(concat('t', toString(number)))), concat('tenant-', toString(number % {TENANTS} + 1)),
    if(number % 5 = 0, 'click', 'open'), concat('<k', toString(intDiv(number, 3)), '@bench>'),
    concat('r', toString(number % 200000), '@customer.example'), concat('cmp-', toString(number % 50)), NULL,
    {_START} + toIntervalMillisecond(number * 1000), NULL, NULL, 'Apple Mail', number % 4 = 0,
    if(number % 4 = 0, 'apple_mpp', NULL), 1, NULL, false, 0, number
FROM numbers(intDiv({{n}}, 2))""",
    "campaigns": f"""
INSERT INTO {{db}}.campaigns (event_id, tenant, campaign_id, name, cost, currency, started_at, updated_at,
    _topic_partition, _topic_offset)
SELECT hex(MD5(concat('c', toString(number)))), concat('tenant-', toString(t + 1)), concat('cmp-', toString(c)),
    concat('Campaign ', toString(c)), 1000 + c * 10, 'EUR', {_START}, {_START}, 0, number
FROM (SELECT number, number % {TENANTS} AS t, intDiv(number, {TENANTS}) AS c FROM numbers({TENANTS} * 50))""",
    "conversions": f"""
INSERT INTO {{db}}.conversions (event_id, tenant, campaign_id, recipient, message_id, revenue, currency, event_time,
    _topic_partition, _topic_offset)
SELECT hex(MD5(concat('v', toString(number)))), concat('tenant-', toString(number % {TENANTS} + 1)),
    concat('cmp-', toString(number % 50)), NULL, NULL, 10 + number % 300, 'EUR',
    {_START} + toIntervalSecond(number * 37), 0, number
FROM numbers(intDiv({{n}}, 200))""",
    "escalations": f"""
INSERT INTO {{db}}.escalations (event_id, tenant, message_id, conversation_id, state, previous_state, policy,
    event_time, owner, mailbox, regarding, _topic_partition, _topic_offset)
SELECT hex(MD5(concat('e', toString(number)))), concat('tenant-', toString(number % {TENANTS} + 1)),
    concat('<m', toString(number * 20), '@bench>'), concat('c-', toString(number * 4)),
    if(number % 3 = 0, 'ESCALATED', 'WARNED'), 'OPEN', 'default', {_START} + toIntervalSecond(number * 10),
    NULL, 'support', NULL, 0, number
FROM numbers(intDiv({{n}}, 20))""",
    # Target instances (first response, next response, resolution of a conversation of five
    # mails), each started and then met on time, met late, breached or warned: two events.
    "sla_events": f"""
INSERT INTO {{db}}.sla_events (event_id, tenant, conversation_id, message_id, target, outcome, cycle, policy, team,
    owner, mailbox, regarding, started_at, due_at, event_time, business_seconds, on_time, _topic_partition, _topic_offset)
SELECT hex(MD5(concat('s', toString(number)))), concat('tenant-', toString(intDiv(instance, 3) % {TENANTS} + 1)),
    concat('c-', toString(intDiv(instance, 3))), concat('<m', toString(intDiv(instance, 3) * 5), '@bench>'),
    ['first_response', 'next_response', 'resolution'][instance % 3 + 1], outcome, 1, 'default',
    ['first-line', 'second-line'][instance % 2 + 1], concat('agent', toString(instance % 40), '@support.example'),
    if(instance % 3 = 0, 'sales', 'support'), NULL, started, started + toIntervalHour(8),
    if(number % 2 = 0, started, started + toIntervalSecond(elapsed)), if(number % 2 = 0, 0, elapsed),
    outcome = 'met' AND elapsed < 28800, 0, number
FROM (SELECT number, intDiv(number, 2) AS instance, {_START} + toIntervalSecond(instance * 2) AS started,
             cityHash64(instance) % 57600 AS elapsed,
             if(number % 2 = 0, 'started', ['met', 'met', 'breached', 'warned'][instance % 4 + 1]) AS outcome
      FROM numbers(intDiv({{n}}, 2)))""",
    "mail_untracked": f"""
INSERT INTO {{db}}.mail_untracked (event_id, tenant, generation, message_id, reason, conversation_id, direction,
    event_time, subject, from_addr, `to`, mailbox, evidence, _topic_partition, _topic_offset)
SELECT hex(MD5(concat('u', toString(number)))), concat('tenant-', toString(number % {TENANTS} + 1)), 0,
    concat('<u', toString(number), '@bench>'), ['internal', 'duplicate', 'loop'][number % 3 + 1], NULL, 'in',
    {_START} + toIntervalSecond(number * 20), 'x', 'a@b', [], 'support', '{{}}', 0, number
FROM numbers(intDiv({{n}}, 50))""",
}


def run_clickhouse_bench(settings: Settings, *, mails: int, repeat: int, insert_mails: int, data_dir: Path,
                         progress: Callable[[str], None] = lambda _m: None) -> dict:
    path = data_dir / "bench-clickhouse"
    shutil.rmtree(path, ignore_errors=True)
    store = ClickHouseStore(ClickHouseSettings(database="bench"), path)
    store.migrate()

    progress(f"insert rate: {insert_mails} seeded mails with campaigns, through the sink's inserts")
    records = list(seed_records(settings, tenants=1, mails_per_tenant=insert_mails, campaigns=5,
                                recipients=insert_mails // 10))
    started = time.perf_counter()
    counts = load_records(store, iter(records), batch=5_000)
    elapsed = time.perf_counter() - started
    rows = sum(counts.values())
    for table in counts:
        store.client.command(f"TRUNCATE TABLE {store.database}.{table}")
    store.client.command(f"TRUNCATE TABLE {store.database}.campaign_daily")
    store.client.command(f"TRUNCATE TABLE {store.database}.response_daily")

    filled = {}
    for table, statement in _FILL.items():
        progress(f"filling {table} for {mails:,} mails")
        started_fill = time.perf_counter()
        store.client.command(store.sql(statement).replace("{n}", str(mails)))
        filled[table] = {"rows": store.query(f"SELECT count() FROM {{db}}.{table}").result_rows[0][0],
                         "seconds": round(time.perf_counter() - started_fill, 2)}

    time_from = datetime(2026, 1, 1, tzinfo=timezone.utc)
    time_to = datetime(2027, 1, 1, tzinfo=timezone.utc)
    queries = []
    for dashboard in DASHBOARDS:
        variables = default_variables(store, dashboard, "tenant-1")
        for panel in dashboard.panels:
            progress(f"{dashboard.uid}: {panel.title}")
            sql = panel_sql(panel, database=store.database, time_from=time_from, time_to=time_to, variables=variables)
            timings = []
            for _ in range(repeat):
                started_query = time.perf_counter()
                result = store.client.query(sql)
                timings.append((time.perf_counter() - started_query) * 1000)
            queries.append({"dashboard": dashboard.uid, "panel": panel.title, "rows": len(result.result_rows),
                            "median_ms": round(statistics.median(timings), 1), "max_ms": round(max(timings), 1)})
    store.close()
    slowest = max(queries, key=lambda q: q["median_ms"])
    return {
        "benchmark": "clickhouse",
        "machine": machine_facts(),
        "settings": {"mails": mails, "repeat": repeat, "insert_mails": insert_mails, "tenants": TENANTS,
                     "store": "chdb"},
        "insert": {"rows": rows, "seconds": round(elapsed, 2), "rows_per_s": round(rows / elapsed),
                   "batch_rows": 5_000, "tables": counts},
        "filled": filled,
        "queries": queries,
        "summary": {
            "insert_rows_per_s": round(rows / elapsed),
            "slowest_query": f"{slowest['dashboard']} / {slowest['panel']}",
            "slowest_median_ms": slowest["median_ms"],
            "queries_under_target": sum(q["median_ms"] < TARGET_MS for q in queries),
            "queries": len(queries),
            "target_ms": TARGET_MS,
        },
    }

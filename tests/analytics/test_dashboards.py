"""Every dashboard panel runs on chDB against seeded data, with Grafana's macros expanded, and
gives non-empty, correctly typed results; redeliveries and replays change no count."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from numbers import Number

import pytest
import yaml

from pipeline.analytics.dashboards import (CORRELATION_QUALITY, CURRENCY, DASHBOARD_DIR, DASHBOARDS, DURATION,
                                         PROVISIONING_FILES,
                                           RESPONSE_TIMES, SHARE, TENANT_VARIABLE, UNITS, Panel, dashboard_json,
                                           render_all)
from pipeline.analytics.macros import MacroError, expand
from pipeline.analytics.panels import (data_time_range, default_variables, panel_query, run_dashboard, store_tables,
                                       tenants_by_mail)
from pipeline.analytics.seed import load_records, seed_records
from pipeline.settings import EscalationPolicy, Settings

# As the `seeded` fixture of conftest.py, for the stores this module loads itself.
SEED = {"tenants": 2, "mails_per_tenant": 1500, "campaigns": 3, "recipients": 300}


# Panels of what is open at the end of the time range ("now" on a live dashboard): on the seed,
# they have rows for a range that ends while its conversations run.
OPEN_AT_THE_END = ("Targets breaching next",)


def _results(store, tenant: str, time_to: datetime | None = None):
    start, end = data_time_range(store)
    return {(dashboard.uid, result.panel.title): result
            for dashboard in DASHBOARDS
            for result in run_dashboard(store, dashboard, time_from=start, time_to=time_to or end + timedelta(days=2),
                                        variables=default_variables(store, dashboard, tenant))}


def test_dashboard_files_are_current_and_use_the_clickhouse_plugin():
    for name, text in render_all().items():
        assert (DASHBOARD_DIR / name).read_text() == text, f"run `threadline dashboards build` ({name})"
        dashboard = json.loads(text)
        assert dashboard["uid"] and dashboard["panels"]
        names = [v["name"] for v in dashboard["templating"]["list"]]
        assert names[:2] == ["datasource", "tenant"]
        for panel in dashboard["panels"]:
            assert panel["datasource"]["type"] == "grafana-clickhouse-datasource"
            (target,) = panel["targets"]
            assert target["editorType"] == "sql" and target["rawSql"]
            assert target["format"] == (0 if panel["type"] == "timeseries" else 1)


def _json_panels():
    for dashboard in DASHBOARDS:
        by_title = {p.title: p for p in dashboard.panels}
        for data in dashboard_json(dashboard)["panels"]:
            yield dashboard, by_title[data["title"]], data


def _overrides(data: dict) -> dict[str, dict[str, object]]:
    """column -> {property id: value} of a panel's field overrides."""
    return {o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
            for o in data["fieldConfig"]["overrides"] if o["matcher"]["id"] == "byName"}


def test_every_panel_has_a_unit_and_explicit_thresholds():
    with pytest.raises(TypeError, match="unit"):
        Panel("No unit", "SELECT 1")  # a panel must say what its values are
    for dashboard, panel, data in _json_panels():
        where = f"{dashboard.uid} / {panel.title}"
        defaults = data["fieldConfig"]["defaults"]
        assert defaults.get("unit") in UNITS, where  # a panel without a unit fails here
        # Explicit, so Grafana's own default (red from 80) never colours a count.
        assert defaults["thresholds"]["steps"][0]["value"] is None, where
        for column, properties in _overrides(data).items():
            assert properties.get("unit", defaults["unit"]) in UNITS, (where, column)
        # Units are in the units, not in the titles.
        assert not re.search(r"\((?:h|hours?|s|seconds|days?|%|EUR|€)\)|\bin (?:hours|seconds|days|EUR)\b",
                             panel.title, re.IGNORECASE), where
        if panel.kind == "timeseries":
            assert data["interval"] == "1d" and defaults["custom"]["spanNulls"] is False, where
        if panel.kind == "piechart":  # one slice per row, not one per column summed over the rows
            assert data["options"]["reduceOptions"]["values"] is True, where
        if panel.kind == "barchart":
            assert data["options"]["orientation"] == "horizontal", where


def test_thresholds_are_where_a_manager_expects_them():
    policy = EscalationPolicy()
    first_response = policy.sla.first_response
    expected = {
        "share_met": [("red", None), ("orange", 0.8), ("green", 0.95)],
        "p50": [("green", None), ("orange", first_response.warn_after * 3600), ("red", first_response.breach_after * 3600)],
        "waiting": [("green", None), ("orange", policy.warn_after * 3600), ("red", policy.escalate_after * 3600)],
        "roi": [("red", None), ("green", 0)],
    }
    seen = set()
    for dashboard, panel, data in _json_panels():
        overrides = _overrides(data)
        for column, steps in expected.items():
            if column in overrides and (column != "p50" or panel.title.startswith("First response time")):
                thresholds = overrides[column]["thresholds"]["steps"]
                assert [(step["color"], step["value"]) for step in thresholds] == steps, (panel.title, column)
                if panel.kind == "table":
                    assert overrides[column]["custom.cellOptions"]["type"] == "color-background", panel.title
                if panel.kind == "timeseries":
                    assert overrides[column]["custom.thresholdsStyle"]["mode"] == "dashed", panel.title
                seen.add((panel.title, column))
    assert {title for title, column in seen if column == "share_met"} == {
        "Targets met per day", "Targets met per owner", "Targets met per team", "Targets met per mailbox"}
    assert {("First response time per owner", "p50"), ("First response time per mailbox", "p50"),
            ("Oldest unanswered mail", "waiting"), ("Campaigns", "roi")} <= seen
    response_times = json.loads(render_all()[RESPONSE_TIMES.file_name])
    (percentiles,) = [p for p in response_times["panels"] if p["title"] == "First response time per owner"]
    assert {column: properties["unit"] for column, properties in _overrides(percentiles).items()} == {
        "p50": "dtdurations", "p90": "dtdurations", "p99": "dtdurations"}
    (stat,) = [p for p in response_times["panels"] if p["title"] == "Unanswered conversations"]
    assert _overrides(stat)["conversations"]["thresholds"]["steps"][1] == {"color": "orange", "value": 1}


def test_tenant_variable_defaults_to_the_default_tenant_and_lists_the_busiest_first(seeded):
    for dashboard in DASHBOARDS:
        (tenant,) = [v for v in dashboard_json(dashboard)["templating"]["list"] if v["name"] == "tenant"]
        assert tenant["current"] == {"text": "default", "value": "default"} and tenant["sort"] == 0
        assert not tenant["includeAll"]  # tenants are separate customers: one at a time
        for variable in dashboard_json(dashboard)["templating"]["list"][2:]:
            assert "current" in variable, (dashboard.uid, variable["name"])
    # Grafana falls back to the first value when "default" has no data: the tenant with the most mail.
    start, end = data_time_range(seeded)
    sql, parameters = panel_query(TENANT_VARIABLE.query, database=seeded.database, time_from=start, time_to=end,
                                  variables={})
    listed = [row[0] for row in seeded.client.query(sql, parameters=parameters).result_rows]
    counts = dict(seeded.query("SELECT tenant, count() FROM {db}.mail_correlated_latest GROUP BY tenant").result_rows)
    assert sorted(listed) == sorted(counts) == ["tenant-1", "tenant-2"]
    assert listed == sorted(counts, key=lambda t: (-counts[t], t))
    assert tenants_by_mail(seeded, start, end) == [(t, counts[t]) for t in listed]
    assert default_variables(seeded, RESPONSE_TIMES)["tenant"] == listed[0]
    # In an hour where the other tenant had more mail, that one comes first.
    (hour,), = seeded.query(
        "SELECT toStartOfHour(event_time) AS hour FROM {db}.mail_correlated_latest GROUP BY hour "
        "HAVING countIf(tenant = {second:String}) > countIf(tenant = {first:String}) ORDER BY hour LIMIT 1",
        parameters={"first": listed[0], "second": listed[1]}).result_rows
    assert tenants_by_mail(seeded, hour, hour + timedelta(minutes=59, seconds=59))[0][0] == listed[1]


def test_no_sql_names_a_database():
    tables = store_tables()
    assert {"mail_correlated_latest", "sla_events", "campaign_daily"} <= tables
    queries = [(p.title, p.sql) for d in DASHBOARDS for p in d.panels]
    queries += [(v.name, v.query) for d in DASHBOARDS for v in d.variables if v.query]
    for where, sql in queries:
        assert not re.search(r"\b(?:FROM|JOIN)\s+\w+\.", sql), where  # a database.table read
        ctes = set(re.findall(r"\b(\w+) AS \(", sql))
        for name in re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", sql):
            assert name in tables or name in ctes, (where, name)


def test_what_grafana_sends_runs_in_the_data_sources_default_database(seeded, chdb_path):
    """The unqualified text, on a client whose default database is the store's (as the plugin's
    connection is), gives the rows our commands get."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(interface="chdb", path=str(chdb_path), database=seeded.database,
                                           tz_mode="aware")
    start, end = data_time_range(seeded)
    try:
        for dashboard in DASHBOARDS:
            variables = default_variables(seeded, dashboard, "tenant-1")
            ours = run_dashboard(seeded, dashboard, time_from=start, time_to=end, variables=variables)
            for panel, result in zip(dashboard.panels, ours):
                sent = expand(panel.sql, time_from=start, time_to=end, variables=variables)
                assert seeded.database not in sent
                assert client.query(sent).result_rows == result.rows, panel.title
    finally:
        client.close()


def test_provisioning_files_point_at_the_plugin_and_the_dashboards():
    datasource = yaml.safe_load((DASHBOARD_DIR / "provisioning/datasources/threadline-clickhouse.yaml").read_text())
    assert datasource["datasources"][0]["type"] == "grafana-clickhouse-datasource"
    assert datasource["datasources"][0]["jsonData"]["defaultDatabase"] == "threadline"
    provider = yaml.safe_load((DASHBOARD_DIR / "provisioning/dashboards/threadline.yaml").read_text())
    assert provider["providers"][0]["type"] == "file"
    # The doctor checks the list, so a provisioning file added to the folder belongs in it.
    on_disk = {path.relative_to(DASHBOARD_DIR).as_posix() for path in (DASHBOARD_DIR / "provisioning").rglob("*.yaml")}
    assert set(PROVISIONING_FILES) == on_disk


@pytest.mark.parametrize("tenant", ["tenant-1", "tenant-2"])
def test_every_panel_returns_typed_rows_on_seeded_data(seeded, tenant):
    results = _results(seeded, tenant)
    (last_sla_event,), = seeded.query("SELECT max(event_time) FROM {db}.sla_events").result_rows
    while_open = _results(seeded, tenant, time_to=last_sla_event)
    results.update({key: while_open[key] for key in results if key[1] in OPEN_AT_THE_END})
    for (uid, title), result in results.items():
        assert result.rows, f"{uid} / {title}: no rows"
        kind = result.panel.kind
        if kind == "timeseries":
            assert all(isinstance(row[0], datetime) for row in result.rows), title
            assert all(isinstance(v, Number) for row in result.rows for v in row[1:]), title
            assert [row[0] for row in result.rows] == sorted(row[0] for row in result.rows), title
        elif kind == "stat":
            assert len(result.rows) == 1 and isinstance(result.rows[0][0], Number), title
        elif kind in ("barchart", "piechart"):
            assert all(isinstance(row[-1], Number) and row[-1] > 0 for row in result.rows), title
        for column in result.columns:  # durations are seconds, shares 0-1, money EUR: every such column says so
            if column in ("p50", "p90", "p99", "waiting", "time_left"):
                assert result.panel.unit_of(column) == DURATION, (title, column)
            if column in ("revenue", "cost"):
                assert result.panel.unit_of(column) == CURRENCY, (title, column)
            if "share" in column or column == "roi":
                assert result.panel.unit_of(column) == SHARE, (title, column)
        for column, unit in result.panel.units:  # a unit names a column the panel returns, of numbers
            index = result.columns.index(column)
            assert all(isinstance(row[index], Number) or row[index] is None for row in result.rows), (title, column)
            if unit == SHARE and "share" in column:  # ROI, a ratio too, may be negative or above 1
                assert all(row[index] is None or 0 <= row[index] <= 1 for row in result.rows), (title, column)


def test_panels_show_what_the_seed_holds(seeded):
    results = _results(seeded, "tenant-1")
    methods = {row[0] for row in results[("threadline-correlation-quality", "Method mix")].rows}
    assert {"InReplyTo", "SmartMatching", "None"} <= methods
    campaigns = results[("threadline-campaign-roi", "Campaigns")]
    column = {name: i for i, name in enumerate(campaigns.columns)}
    for row in campaigns.rows:
        assert row[column["human_opens"]] >= row[column["unique_openers"]] > 0
        expected_roi = round((row[column["revenue"]] - row[column["cost"]]) / row[column["cost"]], 3)
        assert row[column["roi"]] == pytest.approx(expected_roi, abs=0.002)
    reasons = dict(results[("threadline-correlation-quality", "Untracked mail by reason")].rows)
    assert set(reasons) == {"duplicate"}


def test_links_to_review_are_the_newest_generations_doubtful_links_newest_first(seeded):
    review = ("threadline-correlation-quality", "Low-confidence links to review")
    result = _results(seeded, "tenant-1")[review]
    assert result.columns == ("received", "message_id", "parent", "method", "confidence", "subject")
    doubtful = [(row[1], row[3], row[4]) for row in result.rows if row[1].endswith("@seed.test>")]
    assert doubtful == [("<doubt-3@seed.test>", "SmartMatching", 0.8), ("<doubt-2@seed.test>", "ConversationIndex", 0.6),
                        ("<doubt-1@seed.test>", "SmartMatching", 0.35)]
    assert all(row[4] < 0.9 for row in result.rows)
    assert [row[0] for row in result.rows] == sorted((row[0] for row in result.rows), reverse=True)
    start, end = data_time_range(seeded)
    stricter = {**default_variables(seeded, CORRELATION_QUALITY, "tenant-1"), "review_below": "0.5"}
    (panel,) = [p for p in CORRELATION_QUALITY.panels if p.title == review[1]]
    rows = next(r.rows for r in run_dashboard(seeded, CORRELATION_QUALITY, time_from=start,
                                              time_to=end + timedelta(days=2), variables=stricter)
                if r.panel is panel)
    assert [row[1] for row in rows if row[1].endswith("@seed.test>")] == ["<doubt-1@seed.test>"]


def test_redelivery_and_two_replays_change_no_count(clickhouse_factory):
    settings = Settings()
    clean = clickhouse_factory()
    load_records(clean, seed_records(settings, **SEED))
    replayed = clickhouse_factory()
    load_records(replayed, seed_records(settings, **SEED))
    load_records(replayed, seed_records(settings, **SEED))  # every batch delivered again
    for generation in (1, 2):  # two replays with unchanged settings
        load_records(replayed, seed_records(settings, generation=generation, **SEED))
    before, after = _results(clean, "tenant-1"), _results(replayed, "tenant-1")
    assert before.keys() == after.keys()
    for key in before:
        if key == ("threadline-correlation-quality", "Generations"):
            # Lists the generations themselves: one row per replay, each with the same counts.
            assert [row[2:] for row in after[key].rows] == [before[key].rows[0][2:]] * 3
            continue
        assert after[key].rows == before[key].rows, key


def test_macros_expand_time_filters_and_refuse_unknown_variables():
    start, end = datetime(2026, 1, 1), datetime(2026, 2, 1)
    sql = expand("SELECT 1 WHERE $__timeFilter(t) AND x = decodeURLComponent('${tenant:percentencode}') "
                 "AND $__timeInterval(t) > $__fromTime",
                 time_from=start, time_to=end, variables={"tenant": "acme"}, interval_s=3600)
    assert "t >= toDateTime64('2026-01-01 00:00:00', 3, 'UTC') AND t <= toDateTime64('2026-02-01 00:00:00'" in sql
    assert "x = decodeURLComponent('acme')" in sql and "toStartOfInterval(t, INTERVAL 3600 second)" in sql
    with pytest.raises(MacroError, match="no value"):
        expand("SELECT decodeURLComponent('${campaign:percentencode}')", time_from=start, time_to=end, variables={})
    with pytest.raises(MacroError, match="unknown macro"):
        expand("SELECT 1 WHERE $__timeFilter_ms(t)", time_from=start, time_to=end, variables={})

"""The dashboards, defined once: Grafana JSON in ``dashboards/`` is built from these panels
(``threadline dashboards build``; a test keeps the files current), and the same SQL feeds
``threadline report`` and ``threadline bench clickhouse``.

SQL targets the ``grafana-clickhouse-datasource`` plugin.  Table names are unqualified: the
plugin opens its connection in the data source's default database (``defaultDatabase``, sent as
the ``database`` parameter of every HTTP request), so the dashboards read whatever database the
data source names and no SQL holds one; our own commands qualify the store's tables with
``clickhouse.database`` before running a panel (:func:`pipeline.analytics.panels.in_database`).
Counting queries read FINAL tables or the ``*_latest`` views, so redeliveries and replays never
double count.

Every template variable is written ``decodeURLComponent('${name:percentencode}')`` (numbers are
parsed from that with ``toUInt16OrZero`` or ``toFloat64OrZero``): Grafana percent-encodes the value, so nothing typed
into a variable can change a query's shape (see :mod:`pipeline.analytics.macros`, which refuses
any other form).  Every panel and variable query filters by the tenant variable; dead letters
carry their tenant as the record key (every topic is keyed by tenant).  The read-only users of
``deploy/clickhouse/grafana-reader.sql`` are held to their tenant by row policies as well.

Every panel has a unit (Grafana's unit ids: ``fieldConfig.defaults.unit``, and per column where
a column differs), and the columns a manager judges against a target have thresholds: the share
of SLA targets met (red below 80 %, green from 95 %), response times and waiting times against
the default policy's warn and breach times (:class:`pipeline.settings.EscalationPolicy`), ROI
below zero.  The report formats and colours values by the same units and thresholds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.settings import EscalationPolicy

# Package data (an installed wheel carries it); the checkout's top-level dashboards/ links here.
DASHBOARD_DIR = Path(__file__).resolve().parent / "grafana"
DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "${datasource}"}
# Grafana unit ids (the report formats values by them too).
DURATION = "dtdurations"  # seconds, shown as "9 days, 1 hour" (the report: "9 d 1 h")
SHARE = "percentunit"  # 0-1, shown as a percentage
COUNT = "short"  # counts: 1.2 K, 3.4 Mil
NUMBER = "none"  # a plain number: a generation, a confidence
CURRENCY = "currencyEUR"  # revenue and cost: the default currency of `campaign create` and `convert`
UNITS = (DURATION, SHARE, COUNT, NUMBER, CURRENCY)


@dataclass(frozen=True)
class Thresholds:
    """Grafana's absolute thresholds: the colour below the first step, then (from value, colour)
    steps upwards.  Colours are Grafana's names ("transparent": no colour)."""

    base: str
    steps: tuple[tuple[float, str], ...] = ()

    def colour_of(self, value: float) -> str:
        colour = self.base
        for start, step_colour in self.steps:
            if value >= start:
                colour = step_colour
        return colour

    def json(self) -> dict:
        return {"mode": "absolute", "steps": [{"color": self.base, "value": None},
                                              *({"color": colour, "value": start} for start, colour in self.steps)]}


NO_THRESHOLDS = Thresholds("transparent")
_HOUR = 3600
_POLICY = EscalationPolicy()  # the default policy: its warn and escalation times, its SLA targets
_FIRST_RESPONSE = _POLICY.sla.first_response
# Share of SLA targets met on time: below 80 % is a problem, from 95 % the desk meets its SLA.
SHARE_MET = Thresholds("red", ((0.8, "orange"), (0.95, "green")))
# Time to a first reply against the default first-response target: warned, then breached.
FIRST_RESPONSE_TIME = Thresholds("green", ((_FIRST_RESPONSE.warn_after * _HOUR, "orange"),
                                           (_FIRST_RESPONSE.breach_after * _HOUR, "red")))
# How long a customer has waited, against the default policy's WARNED and ESCALATED times.
WAITING = Thresholds("green", ((_POLICY.warn_after * _HOUR, "orange"), (_POLICY.escalate_after * _HOUR, "red")))
# Time left to a breach: under an hour, or within the time from the first-response warning to the breach.
TIME_LEFT = Thresholds("red", ((_HOUR, "orange"),
                               ((_FIRST_RESPONSE.breach_after - _FIRST_RESPONSE.warn_after) * _HOUR, "transparent")))
# Something waits (any count above zero deserves a look).
WAITING_COUNT = Thresholds("green", ((1, "orange"),))
ROI = Thresholds("red", ((0, "green"),))  # a campaign that lost money


@dataclass(frozen=True)
class Panel:
    title: str
    sql: str
    kind: str = "table"  # table, timeseries, stat, barchart, piechart
    description: str = ""
    width: int = 12
    height: int = 8
    units: tuple[tuple[str, str], ...] = ()  # (column, unit) of the columns not in ``unit``
    thresholds: tuple[tuple[str, Thresholds], ...] = ()  # (column, thresholds)
    unit: str = field(kw_only=True)  # the unit of the panel's values (a count, a duration, ...): required

    @property
    def format(self) -> int:
        """Plugin target format: 0 time series, 1 table."""
        return 0 if self.kind == "timeseries" else 1

    def unit_of(self, column: str) -> str:
        return dict(self.units).get(column, self.unit)

    def thresholds_of(self, column: str) -> Thresholds | None:
        return dict(self.thresholds).get(column)


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    query: str | None = None  # a query variable; None: a text box
    default: str = ""
    include_all: bool = False


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    variables: tuple[Variable, ...] = field(default=())

    @property
    def file_name(self) -> str:
        return f"{self.uid}.json"


# The tenants, the one with the most mail in the time range first (then by name): Grafana selects
# the first when the default below is not among them, and the report chooses the same one.
TENANTS_BY_MAIL = ("SELECT tenant, countIf($__timeFilter(event_time)) AS mails FROM mail_correlated_latest "
                   "GROUP BY tenant ORDER BY mails DESC, tenant")
DEFAULT_TENANT = "default"  # the tenant of ingest, the SMTP relay and the IMAP poller by default
TENANT_VARIABLE = Variable("tenant", "Tenant", "SELECT tenant FROM (" + TENANTS_BY_MAIL + ") ORDER BY mails DESC, tenant",
                           default=DEFAULT_TENANT)

# Automatic mail that is nobody's mail to the "Unanswered" panels: the kinds a policy ignores by
# default (an out-of-office, an acknowledgement, a bounce neither asks nor answers; mailing-list
# mail counts as a person's).  A code constant, so no text anyone typed.
_PERSONS_MAIL = "automatic NOT IN (" + ", ".join(f"'{kind}'" for kind in EscalationPolicy().ignore_automatic) + ")"

# The tenant's conversations waiting for us: the latest person's mail up to the range's end is
# the customer's, dated in the range and more than $unanswered_hours before its end.  At one
# instant our reply counts as the later mail (as it resolves an escalation clock).  last_reply is
# our latest mail's time (1970 when we never wrote).  The "Unanswered" panels share it.
_WAITING_CONVERSATIONS = """
    SELECT conversation_id, maxIf(event_time, direction = 'out') AS last_reply
    FROM mail_correlated_latest
    WHERE tenant = decodeURLComponent('${tenant:percentencode}') AND event_time <= $__toTime AND """ + _PERSONS_MAIL + """
    GROUP BY conversation_id
    HAVING argMax(direction, (event_time, direction = 'out')) = 'in' AND max(event_time) >= $__fromTime
       AND max(event_time) < $__toTime - INTERVAL toUInt16OrZero(decodeURLComponent('${unanswered_hours:percentencode}')) HOUR
"""

_PERCENTILES = ("p50", "p90", "p99")
_PERCENTILE_UNITS = tuple((column, DURATION) for column in _PERCENTILES)
_FIRST_RESPONSE_THRESHOLDS = tuple((column, FIRST_RESPONSE_TIME) for column in _PERCENTILES)

RESPONSE_TIMES = Dashboard(
    uid="threadline-response-times",
    title="Threadline: response times & escalations",
    description="How fast inbound mail gets its first answer, who answers, what waits, what escalated.",
    variables=(
        TENANT_VARIABLE,
        Variable("responder", "Owner", "SELECT DISTINCT responder FROM mail_responses "
                 "WHERE tenant = decodeURLComponent('${tenant:percentencode}') ORDER BY responder",
                 default="All", include_all=True),
        Variable("unanswered_hours", "Unanswered after (hours)", default="24"),
    ),
    panels=(
        Panel("First responses per day", """
SELECT $__timeInterval(first_response_time) AS time, count() AS first_responses
FROM (
    SELECT answers_message_id, min(response_time) AS first_response_time
    FROM mail_responses_latest
    WHERE tenant = decodeURLComponent('${tenant:percentencode}')
      AND (decodeURLComponent('${responder:percentencode}') = 'All'
           OR responder = decodeURLComponent('${responder:percentencode}'))
    GROUP BY answers_message_id
)
WHERE $__timeFilter(first_response_time)
GROUP BY time ORDER BY time""", kind="timeseries", unit=COUNT),
        Panel("First response time per owner", """
SELECT responder AS owner, count() AS answered,
       quantile(0.5)(seconds) AS p50, quantile(0.9)(seconds) AS p90, quantile(0.99)(seconds) AS p99
FROM (
    SELECT answers_message_id, argMin(responder, response_time) AS responder, min(seconds) AS seconds,
           min(response_time) AS first_response_time
    FROM mail_responses_latest
    WHERE tenant = decodeURLComponent('${tenant:percentencode}')
    GROUP BY answers_message_id
)
WHERE $__timeFilter(first_response_time)
  AND (decodeURLComponent('${responder:percentencode}') = 'All' OR responder = decodeURLComponent('${responder:percentencode}'))
GROUP BY owner ORDER BY p50""", description="The time to the first reply to each inbound mail: percentiles.",
              unit=COUNT, units=_PERCENTILE_UNITS, thresholds=_FIRST_RESPONSE_THRESHOLDS),
        Panel("First response time per mailbox", """
SELECT mailbox, count() AS answered,
       quantile(0.5)(seconds) AS p50, quantile(0.9)(seconds) AS p90, quantile(0.99)(seconds) AS p99
FROM (
    SELECT answers_message_id, any(mailbox) AS mailbox, min(seconds) AS seconds,
           min(response_time) AS first_response_time
    FROM mail_responses_latest
    WHERE tenant = decodeURLComponent('${tenant:percentencode}')
    GROUP BY answers_message_id
)
WHERE $__timeFilter(first_response_time)
GROUP BY mailbox ORDER BY mailbox""", description="The time to the first reply to each inbound mail: percentiles.",
              unit=COUNT, units=_PERCENTILE_UNITS, thresholds=_FIRST_RESPONSE_THRESHOLDS),
        Panel("Unanswered conversations", "SELECT count() AS conversations FROM (" + _WAITING_CONVERSATIONS + ")",
              kind="stat", width=6, unit=COUNT, thresholds=(("conversations", WAITING_COUNT),),
              description="Conversations whose latest person's mail is the customer's and older than "
                          "$unanswered_hours: a conversation we replied to last is answered, however many mails it "
                          "holds; out-of-office replies, acknowledgements and bounces are nobody's mail."),
        # A conversation's current state is its latest escalation record up to the range's end.
        # Records of one conversation can share an instant; the tracker then emits a deadline's
        # WARNED / ESCALATED first, then the mail's OPEN (a restart), then RESOLVED (a reply, also
        # to a clock the same mail opened): that order breaks the tie, whatever order rows arrive in.
        Panel("Escalations by state", """
SELECT state, count() AS conversations
FROM (
    SELECT argMax(state, (event_time, indexOf(['WARNED', 'ESCALATED', 'OPEN', 'RESOLVED'], state))) AS state
    FROM escalations FINAL
    WHERE tenant = decodeURLComponent('${tenant:percentencode}') AND event_time <= $__toTime
    GROUP BY conversation_id
    HAVING max(event_time) >= $__fromTime
)
GROUP BY state ORDER BY state""", kind="barchart", width=6, unit=COUNT,
              description="Conversations with an escalation record in the time range, each counted once in its "
                          "current state: its latest record up to the end of the range."),
        Panel("Oldest unanswered mail", """
SELECT min(m.event_time) AS waiting_since, argMin(m.from_addr, m.event_time) AS sender,
       argMin(m.subject, m.event_time) AS subject, argMin(m.mailbox, m.event_time) AS mailbox,
       count() AS unanswered_mails, age('second', min(m.event_time), $__toTime) AS waiting
FROM mail_correlated_latest AS m
INNER JOIN (""" + _WAITING_CONVERSATIONS + """) AS c ON m.conversation_id = c.conversation_id
WHERE m.tenant = decodeURLComponent('${tenant:percentencode}') AND m.direction = 'in' AND m.""" + _PERSONS_MAIL + """
  AND m.event_time > c.last_reply AND m.event_time <= $__toTime
GROUP BY m.conversation_id
ORDER BY waiting_since, m.conversation_id LIMIT 50""", width=24, unit=COUNT, units=(("waiting", DURATION),),
              thresholds=(("waiting", WAITING),),
              description="The unanswered conversations, longest waiting first: the oldest of the customer's mails "
                          "since our last reply, and how many have come since."),
    ),
)

# Per campaign: its opens, clicks and bounces, conversions, revenue, cost and ROI.
_CAMPAIGNS = """
WITH
    stats AS (
        SELECT campaign_id, uniqExactMerge(human_opens) AS human_opens, uniqExactMerge(machine_opens) AS machine_opens,
               uniqExactMerge(unique_human_openers) AS unique_openers, uniqExactMerge(human_clicks) AS human_clicks,
               uniqExactMerge(machine_clicks) AS machine_clicks, uniqExactMerge(hard_bounces) AS hard_bounces,
               uniqExactMerge(soft_bounces) AS soft_bounces
        FROM campaign_daily
        WHERE tenant = decodeURLComponent('${tenant:percentencode}')
          AND day >= toDate($__fromTime) AND day <= toDate($__toTime)
        GROUP BY campaign_id),
    sales AS (
        SELECT campaign_id, count() AS conversions, sum(revenue) AS revenue
        FROM conversions FINAL
        WHERE tenant = decodeURLComponent('${tenant:percentencode}') AND $__timeFilter(event_time)
        GROUP BY campaign_id),
    costs AS (
        SELECT campaign_id, argMax(name, updated_at) AS name, argMax(cost, updated_at) AS cost
        FROM campaigns FINAL
        WHERE tenant = decodeURLComponent('${tenant:percentencode}')
        GROUP BY campaign_id)
SELECT c.campaign_id AS campaign, c.name AS name, s.unique_openers AS unique_openers, s.human_opens AS human_opens,
       s.machine_opens AS machine_opens, s.human_clicks AS human_clicks, s.machine_clicks AS machine_clicks,
       s.hard_bounces AS hard_bounces, s.soft_bounces AS soft_bounces,
       ifNull(v.conversions, 0) AS conversions, round(ifNull(v.revenue, 0), 2) AS revenue, round(c.cost, 2) AS cost,
       round((ifNull(v.revenue, 0) - c.cost) / nullIf(c.cost, 0), 3) AS roi
FROM costs AS c
LEFT JOIN stats AS s ON s.campaign_id = c.campaign_id
LEFT JOIN sales AS v ON v.campaign_id = c.campaign_id
WHERE decodeURLComponent('${campaign:percentencode}') = 'All'
   OR c.campaign_id = decodeURLComponent('${campaign:percentencode}')
ORDER BY c.campaign_id"""

CAMPAIGN_ROI = Dashboard(
    uid="threadline-campaign-roi",
    title="Threadline: campaign ROI",
    description="Opens and clicks by humans and machines, conversions, revenue, cost and ROI per campaign.",
    variables=(
        TENANT_VARIABLE,
        Variable("campaign", "Campaign", "SELECT DISTINCT campaign_id FROM campaigns "
                 "WHERE tenant = decodeURLComponent('${tenant:percentencode}') ORDER BY campaign_id",
                 default="All", include_all=True),
    ),
    panels=(
        Panel("Campaigns", _CAMPAIGNS, width=24, unit=COUNT,
              units=(("revenue", CURRENCY), ("cost", CURRENCY), ("roi", SHARE)), thresholds=(("roi", ROI),),
              description="ROI = (revenue - cost) / cost. Opens and clicks are distinct events."),
        Panel("Revenue and cost per campaign", "SELECT name, revenue, cost FROM (" + _CAMPAIGNS + ")\n"
              "ORDER BY revenue DESC, name", kind="barchart", width=24, unit=CURRENCY,
              description="The campaigns of the table above by revenue; a campaign whose revenue bar is shorter than "
                          "its cost bar lost money."),
        Panel("Opens per day: humans and machines", """
SELECT toDateTime64(day, 3, 'UTC') AS time, uniqExactMerge(human_opens) AS human_opens,
       uniqExactMerge(machine_opens) AS machine_opens
FROM campaign_daily
WHERE tenant = decodeURLComponent('${tenant:percentencode}')
  AND (decodeURLComponent('${campaign:percentencode}') = 'All' OR campaign_id = decodeURLComponent('${campaign:percentencode}'))
  AND day >= toDate($__fromTime) AND day <= toDate($__toTime)
GROUP BY time ORDER BY time""", kind="timeseries", unit=COUNT),
        Panel("Machine opens and clicks by reason", """
SELECT ifNull(machine_reason, 'unknown') AS reason, count() AS events
FROM tracking_events FINAL
WHERE tenant = decodeURLComponent('${tenant:percentencode}') AND is_machine
  AND (decodeURLComponent('${campaign:percentencode}') = 'All' OR campaign_id = decodeURLComponent('${campaign:percentencode}'))
  AND $__timeFilter(event_time)
GROUP BY reason ORDER BY events DESC""", kind="piechart", unit=COUNT),
        Panel("Revenue per day", """
SELECT toStartOfDay(event_time) AS time, round(sum(revenue), 2) AS revenue
FROM conversions FINAL
WHERE tenant = decodeURLComponent('${tenant:percentencode}')
  AND (decodeURLComponent('${campaign:percentencode}') = 'All' OR campaign_id = decodeURLComponent('${campaign:percentencode}'))
  AND $__timeFilter(event_time)
GROUP BY time ORDER BY time""", kind="timeseries", width=24, unit=CURRENCY),
    ),
)

CORRELATION_QUALITY = Dashboard(
    uid="threadline-correlation-quality",
    title="Threadline: correlation quality",
    description="How mail was linked (method mix), what was not tracked and why, dead letters, generations, "
                "and the links a person should check.",
    variables=(TENANT_VARIABLE, Variable("review_below", "Review links below confidence", default="0.9")),
    panels=(
        Panel("Method mix", """
SELECT method_name AS method, count() AS mails
FROM mail_correlated_latest
WHERE tenant = decodeURLComponent('${tenant:percentencode}') AND $__timeFilter(event_time)
GROUP BY method ORDER BY mails DESC""", kind="piechart", width=8, unit=COUNT),
        Panel("Linked share per day", """
SELECT $__timeInterval(event_time) AS time, round(countIf(method NOT IN (0, 1)) / count(), 4) AS linked_share
FROM mail_correlated_latest
WHERE tenant = decodeURLComponent('${tenant:percentencode}') AND $__timeFilter(event_time)
GROUP BY time ORDER BY time""", kind="timeseries", width=16, unit=SHARE),
        Panel("Untracked mail by reason", """
SELECT reason, count() AS mails
FROM mail_untracked_latest
WHERE tenant = decodeURLComponent('${tenant:percentencode}') AND $__timeFilter(event_time)
GROUP BY reason ORDER BY mails DESC""", kind="barchart", width=8, unit=COUNT),
        Panel("Dead letters by reason", """
SELECT source_topic, agent, reason, count() AS records, max(failed_at) AS last_seen
FROM deadletter FINAL
WHERE key = decodeURLComponent('${tenant:percentencode}') AND $__timeFilter(failed_at)
GROUP BY source_topic, agent, reason ORDER BY records DESC""", width=16, unit=COUNT),
        Panel("Generations", """
SELECT generation, any(settings_fingerprint) AS settings, count() AS mails,
       countIf(method NOT IN (0, 1)) AS linked
FROM mail_correlated FINAL
WHERE tenant = decodeURLComponent('${tenant:percentencode}')
GROUP BY generation ORDER BY generation""", width=24, unit=COUNT, units=(("generation", NUMBER),),
              description="Every replay is a generation; the newest decision per mail is what the other panels show."),
        Panel("Low-confidence links to review", """
SELECT m.event_time AS received, m.message_id AS message_id, m.parent_message_id AS parent,
       m.method_name AS method, round(m.confidence, 3) AS confidence, m.subject AS subject
FROM mail_correlated_latest AS m
WHERE m.tenant = decodeURLComponent('${tenant:percentencode}') AND $__timeFilter(m.event_time)
  AND m.method NOT IN (0, 1)
  AND m.confidence < toFloat64OrZero(decodeURLComponent('${review_below:percentencode}'))
ORDER BY m.event_time DESC, m.message_id LIMIT 200""", width=24, unit=NUMBER,
              description="Links of the newest generation the engine was least sure of, newest first: "
                          "check them, and correct the wrong ones."),
    ),
)

_TARGET_CHOSEN = ("(decodeURLComponent('${target:percentencode}') = 'All' "
                  "OR target = decodeURLComponent('${target:percentencode}'))")

# Target instances (one conversation's target in one cycle, started by one mail: sla_targets_latest)
# that started in the time range.
_STARTED_TARGETS = """
FROM sla_targets_latest
WHERE tenant = decodeURLComponent('${tenant:percentencode}') AND $__timeFilter(started_at) AND """ + _TARGET_CHOSEN

# Of those, the decided ones: met, or breached.  "Met" is met on time; met late and breached
# count against it.  The panels of shares met group these by owner, team, mailbox or day.
_DECIDED_TARGETS = _STARTED_TARGETS + " AND (met OR breached)"


def _share_met_by(column: str) -> Panel:
    return Panel(f"Targets met per {column}", f"""
SELECT {column}, count() AS decided, countIf(on_time) AS met_on_time, countIf(met AND NOT on_time) AS met_late,
       countIf(breached AND NOT met) AS not_met, countIf(on_time) / count() AS share_met""" + _DECIDED_TARGETS + f"""
GROUP BY {column} ORDER BY {column}""", width=8, unit=COUNT, units=(("share_met", SHARE),),
                 thresholds=(("share_met", SHARE_MET),),
                 description=f"Per {column}: of the targets started in the time range and decided, the share met on "
                             "time (met late and breached count against it; open ones are left out).")


def _nearest_rank(share: float) -> str:
    """The ``share`` percentile of business_seconds by nearest rank: a value that occurred (as
    pipeline.escalation.figures.nearest_rank)."""
    return f"arrayElement(arraySort(groupArray(business_seconds)), toUInt64(ceil({share} * count())))"


# Open target instances, as of the end of the time range, whose breach deadline comes within
# $due_within_hours after it: not met nor breached by then, and not paused (a paused target has no
# deadline).  Read from sla_events, not sla_targets_latest, so that a range in the past shows what
# was due then; events at one instant are ordered as in that view (migration 0008).  Such an
# instance's latest event holds that deadline, so only instances with an event due then are
# aggregated (`bench clickhouse` at 10M mails, 5M SLA events: 84 ms instead of 578).
_DUE_WITHIN = ("due_at > $__toTime AND due_at <= $__toTime + "
               "INTERVAL toUInt16OrZero(decodeURLComponent('${due_within_hours:percentencode}')) HOUR")
_DUE_SOON = """
    SELECT target, conversation_id, cycle, message_id, argMax(tuple(due_at), ordering).1 AS due_at,
           argMax(tuple(owner), ordering).1 AS owner, argMax(tuple(team), ordering).1 AS team,
           argMax(tuple(mailbox), ordering).1 AS mailbox
    FROM (
        SELECT target, conversation_id, cycle, message_id, outcome, due_at, owner, team, mailbox,
               (event_time, indexOf(['started', 'warned', 'breached', 'paused', 'resumed', 'met'], outcome)) AS ordering
        FROM sla_events FINAL
        WHERE tenant = decodeURLComponent('${tenant:percentencode}') AND event_time <= $__toTime AND """ + _TARGET_CHOSEN + """
          AND (conversation_id, target, cycle, message_id) IN (
              SELECT conversation_id, target, cycle, message_id FROM sla_events
              WHERE tenant = decodeURLComponent('${tenant:percentencode}') AND event_time <= $__toTime
                AND """ + _DUE_WITHIN + """)
    )
    GROUP BY target, conversation_id, cycle, message_id
    HAVING countIf(outcome IN ('met', 'breached')) = 0 AND """ + _DUE_WITHIN + """
"""

SLA_TARGETS = Dashboard(
    uid="threadline-sla",
    title="Threadline: SLA targets",
    description="First response, next response and resolution targets: the share met on time, what breaches soon, "
                "how long meeting them took (working time of the policy's calendar, pauses excluded).",
    variables=(
        TENANT_VARIABLE,
        Variable("target", "Target", "SELECT DISTINCT target FROM sla_events "
                 "WHERE tenant = decodeURLComponent('${tenant:percentencode}') ORDER BY target",
                 default="All", include_all=True),
        Variable("due_within_hours", "Breaches due within (hours)", default="24"),
    ),
    panels=(
        Panel("Targets met per day", """
SELECT toStartOfDay(started_at) AS time, countIf(on_time) / count() AS share_met""" + _DECIDED_TARGETS + """
GROUP BY time ORDER BY time""", kind="timeseries", width=24, unit=SHARE, thresholds=(("share_met", SHARE_MET),),
              description="Per day the targets started: the share of the decided ones met on time."),
        _share_met_by("owner"),
        _share_met_by("team"),
        _share_met_by("mailbox"),
        Panel("Breaches due soon", "SELECT count() AS targets FROM (" + _DUE_SOON + ")", kind="stat", width=6, unit=COUNT,
              thresholds=(("targets", WAITING_COUNT),), description="Open targets whose breach deadline comes within $due_within_hours of the end of the "
                          "time range (now, on a live dashboard)."),
        Panel("Targets breaching next", """
SELECT due_at, target, conversation_id, owner, team, mailbox, age('second', $__toTime, due_at) AS time_left
FROM (""" + _DUE_SOON + """)
ORDER BY due_at, conversation_id, target LIMIT 100""", width=18, unit=COUNT, units=(("time_left", DURATION),),
              thresholds=(("time_left", TIME_LEFT),),
              description="The same targets, soonest deadline first, with the time left."),
        Panel("Time to meet a target", f"""
SELECT target, count() AS targets_met, {_nearest_rank(0.5)} AS p50, {_nearest_rank(0.9)} AS p90""" + _STARTED_TARGETS + """
  AND met
GROUP BY target ORDER BY target""", width=24, unit=COUNT, units=(("p50", DURATION), ("p90", DURATION)),
              description="Of the targets started in the time range and met (on time or late): percentiles of the "
                          "working time it took (first response, next response, resolution)."),
    ),
)

DASHBOARDS = (RESPONSE_TIMES, SLA_TARGETS, CAMPAIGN_ROI, CORRELATION_QUALITY)


def _variable_json(variable: Variable) -> dict:
    current = {"text": variable.default, "value": variable.default}
    if variable.query is None:
        return {"name": variable.name, "label": variable.label, "type": "textbox", "query": variable.default,
                "current": current}
    # sort 0: the query's own order (every variable query has an ORDER BY; the tenants come busiest first).
    data = {
        "name": variable.name, "label": variable.label, "type": "query", "datasource": DATASOURCE,
        "query": variable.query, "definition": variable.query, "refresh": 2, "sort": 0,
        "includeAll": variable.include_all, "multi": False, "current": current,
    }
    if variable.include_all:
        data["allValue"] = "All"
        data["current"] = {"text": "All", "value": "$__all"}
    return data


# How a column's thresholds show: coloured table cells, dashed lines on a time series, a coloured
# value on a stat (Grafana's default for a stat: no property needed).
_THRESHOLD_DISPLAY = {
    "table": {"id": "custom.cellOptions", "value": {"type": "color-background", "mode": "basic"}},
    "timeseries": {"id": "custom.thresholdsStyle", "value": {"mode": "dashed"}},
}


LABEL_CHARACTERS = 32  # a category name longer than this is cut with an ellipsis, in Grafana and the report
_PANEL_OPTIONS = {
    # Bar charts lie on their side, names cut to one line each.
    "barchart": {"orientation": "horizontal", "xTickLabelMaxLength": LABEL_CHARACTERS},
    # A slice per row (the panels return one row per category), with its value and share beside it.
    "piechart": {"reduceOptions": {"values": True, "calcs": [], "fields": ""}, "pieType": "pie",
                 "displayLabels": ["percent"],
                 "legend": {"showLegend": True, "displayMode": "table", "placement": "right", "values": ["value", "percent"]}},
}


def _field_config(panel: Panel) -> dict:
    defaults: dict = {"unit": panel.unit, "thresholds": NO_THRESHOLDS.json()}
    if panel.unit == SHARE:
        defaults.update(min=0, max=1)
    if panel.kind == "timeseries":
        # Counts and money per day as bars; shares as points joined by lines, never across a missing day.
        bars = panel.unit != SHARE
        defaults["custom"] = {"drawStyle": "bars" if bars else "line", "fillOpacity": 80 if bars else 0,
                              "showPoints": "never" if bars else "always", "spanNulls": False,
                              "insertNulls": 86_400_000 * 3 // 2}
    columns = dict.fromkeys([column for column, _ in panel.units] + [column for column, _ in panel.thresholds])
    overrides = []
    for column in columns:
        properties = []
        if column in dict(panel.units):
            properties.append({"id": "unit", "value": panel.unit_of(column)})
        thresholds = panel.thresholds_of(column)
        if thresholds is not None:
            properties.append({"id": "thresholds", "value": thresholds.json()})
            if panel.kind in _THRESHOLD_DISPLAY:
                properties.append(_THRESHOLD_DISPLAY[panel.kind])
        overrides.append({"matcher": {"id": "byName", "options": column}, "properties": properties})
    return {"defaults": defaults, "overrides": overrides}


def dashboard_json(dashboard: Dashboard) -> dict:
    panels = []
    x = y = row_height = 0
    for number, panel in enumerate(dashboard.panels, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        data = {
            "id": number, "type": panel.kind, "title": panel.title, "description": panel.description,
            "datasource": DATASOURCE,
            "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
            "targets": [{"refId": "A", "datasource": DATASOURCE, "editorType": "sql", "format": panel.format,
                         "queryType": "timeseries" if panel.format == 0 else "table", "rawSql": panel.sql.strip()}],
            "options": _PANEL_OPTIONS.get(panel.kind, {}),
            "fieldConfig": _field_config(panel),
        }
        if panel.kind == "timeseries":
            data["interval"] = "1d"  # every time series is per day: $__timeInterval buckets of at least a day
        panels.append(data)
        x += panel.width
        row_height = max(row_height, panel.height)
    datasource_variable = {"name": "datasource", "label": "ClickHouse", "type": "datasource",
                           "query": "grafana-clickhouse-datasource"}
    return {
        "uid": dashboard.uid, "title": dashboard.title, "description": dashboard.description,
        "tags": ["threadline"], "timezone": "utc", "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-30d", "to": "now"}, "refresh": "1m",
        "templating": {"list": [datasource_variable, *(_variable_json(v) for v in dashboard.variables)]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render_all() -> dict[str, str]:
    """file name -> JSON text of every dashboard."""
    return {d.file_name: json.dumps(dashboard_json(d), indent=2, ensure_ascii=False) + "\n" for d in DASHBOARDS}


# Grafana's provisioning files beside the dashboards (package data; threadline doctor checks them).
PROVISIONING_FILES = ("provisioning/dashboards/threadline.yaml", "provisioning/datasources/threadline-clickhouse.yaml",
                      "provisioning/datasources/threadline-embedded.yaml")


def out_of_date(folder: Path = DASHBOARD_DIR) -> list[str]:
    """The dashboard files missing from ``folder`` or other than the panels give now."""
    return [name for name, text in render_all().items()
            if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text]


def write_all(folder: Path = DASHBOARD_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written

-- 0008: SLA targets (topic sla.events): every outcome of a conversation's first response, next
-- response and resolution targets, and one row per target instance for the dashboards.
CREATE TABLE IF NOT EXISTS {db}.sla_events
(
    `event_id` String,
    `tenant` String,
    `conversation_id` String,
    `message_id` String,
    `target` LowCardinality(String),
    `outcome` LowCardinality(String),
    `cycle` Int32,
    `policy` String,
    `team` Nullable(String),
    `owner` Nullable(String),
    `mailbox` Nullable(String),
    `regarding` Nullable(String),
    `started_at` DateTime64(3, 'UTC'),
    `due_at` Nullable(DateTime64(3, 'UTC')),
    `event_time` DateTime64(3, 'UTC'),
    `business_seconds` Float64,
    `on_time` Bool,
    `_topic_partition` Int32,
    `_topic_offset` Int64,
    `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, event_id);

-- One row per target instance (tenant, conversation, target, cycle, and the mail that started it:
-- a conversation forgotten after its retention starts over at cycle 1). The latest event is the one
-- with the latest event time; of events at the same moment, the one the tracker emits later: a
-- deadline before a pause or resumption at that moment (it fires before the mail is applied),
-- and met last. So the row does not depend on insert order or a replay.
-- due_at is read through a tuple: argMax skips NULL values, and a paused target's due_at is NULL.
-- business_seconds is the met event's (NULL until met), the working time the target took.
CREATE VIEW IF NOT EXISTS {db}.sla_targets_latest AS
SELECT
    tenant,
    conversation_id,
    target,
    cycle,
    message_id,
    argMax(event_outcome, ordering) AS outcome,
    argMax(event_started_at, ordering) AS started_at,
    argMax(tuple(event_due_at), ordering).1 AS due_at,
    toBool(countIf(event_outcome = 'met') > 0) AS met,
    toBool(countIf(event_outcome = 'met' AND event_on_time) > 0) AS on_time,
    toBool(countIf(event_outcome = 'breached') > 0) AS breached,
    if(met, maxIf(event_business_seconds, event_outcome = 'met'), NULL) AS business_seconds,
    argMax(event_policy, ordering) AS policy,
    argMax(tuple(event_team), ordering).1 AS team,
    argMax(tuple(event_owner), ordering).1 AS owner,
    argMax(tuple(event_mailbox), ordering).1 AS mailbox,
    argMax(tuple(event_regarding), ordering).1 AS regarding,
    min(event_time) AS first_event_time,
    max(event_time) AS last_event_time
FROM
(
    SELECT
        tenant, conversation_id, target, cycle, message_id, event_time,
        outcome AS event_outcome, started_at AS event_started_at,
        due_at AS event_due_at, on_time AS event_on_time, business_seconds AS event_business_seconds,
        policy AS event_policy, team AS event_team, owner AS event_owner, mailbox AS event_mailbox,
        regarding AS event_regarding,
        (event_time, indexOf(['started', 'warned', 'breached', 'paused', 'resumed', 'met'], outcome)) AS ordering
    FROM {db}.sla_events FINAL
)
GROUP BY tenant, conversation_id, target, cycle, message_id;

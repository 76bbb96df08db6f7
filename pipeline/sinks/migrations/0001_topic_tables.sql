-- 0001: one table per topic, columns from schemas/<topic>.avsc plus the sink's meta columns.
-- ReplacingMergeTree on the event's stable id: redeliveries and repeated replays collapse into one row.
-- Queries that count use FINAL (or the *_latest views of 0002).

CREATE TABLE IF NOT EXISTS {db}.mail_correlated
(
    `event_id` String,
    `tenant` String,
    `generation` Int32,
    `settings_fingerprint` String,
    `message_id` String,
    `conversation_id` String,
    `parent_message_id` Nullable(String),
    `regarding` Nullable(String),
    `method` Int32,
    `method_name` String,
    `mail_type` LowCardinality(String),
    `direction` LowCardinality(String),
    `event_time` DateTime64(3, 'UTC'),
    `tracking_token` Nullable(String),
    `candidate_count` Int32,
    `evidence` String,
    `subject` String,
    `from_addr` String,
    `to` Array(String),
    `cc` Array(String),
    `bcc` Array(String),
    `mailbox` String,
    `source_partition` Int32,
    `source_offset` Int64,
    `_topic_partition` Int32,
    `_topic_offset` Int64,
    `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, event_id);

CREATE TABLE IF NOT EXISTS {db}.mail_untracked
(
    `event_id` String,
    `tenant` String,
    `generation` Int32,
    `message_id` String,
    `reason` String,
    `conversation_id` Nullable(String),
    `direction` LowCardinality(String),
    `event_time` DateTime64(3, 'UTC'),
    `subject` String,
    `from_addr` String,
    `to` Array(String),
    `mailbox` String,
    `evidence` String,
    `_topic_partition` Int32,
    `_topic_offset` Int64,
    `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, event_id);

CREATE TABLE IF NOT EXISTS {db}.mail_responses
(
    `event_id` String,
    `tenant` String,
    `generation` Int32,
    `message_id` String,
    `answers_message_id` String,
    `conversation_id` String,
    `regarding` Nullable(String),
    `responder` String,
    `mailbox` String,
    `inbound_time` DateTime64(3, 'UTC'),
    `response_time` DateTime64(3, 'UTC'),
    `seconds` Float64,
    `business_seconds` Nullable(Float64),
    `_topic_partition` Int32,
    `_topic_offset` Int64,
    `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, event_id);

CREATE TABLE IF NOT EXISTS {db}.tracking_events
(
    `event_id` String,
    `tenant` String,
    `kind` LowCardinality(String),
    `message_id` String,
    `recipient` String,
    `campaign_id` Nullable(String),
    `link_url` Nullable(String),
    `event_time` DateTime64(3, 'UTC'),
    `ip` Nullable(String),
    `reverse_dns` Nullable(String),
    `user_agent_family` Nullable(String),
    `is_machine` Bool,
    `machine_reason` Nullable(String),
    `nth_open` Int32,
    `first_open_time` Nullable(DateTime64(3, 'UTC')),
    `probably_forwarded` Bool,
    `_topic_partition` Int32,
    `_topic_offset` Int64,
    `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, event_id);

CREATE TABLE IF NOT EXISTS {db}.escalations
(
    `event_id` String,
    `tenant` String,
    `message_id` String,
    `conversation_id` String,
    `state` LowCardinality(String),
    `previous_state` LowCardinality(Nullable(String)),
    `policy` String,
    `event_time` DateTime64(3, 'UTC'),
    `owner` Nullable(String),
    `mailbox` Nullable(String),
    `regarding` Nullable(String),
    `_topic_partition` Int32,
    `_topic_offset` Int64,
    `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, event_id);

CREATE TABLE IF NOT EXISTS {db}.alerts
(
    `event_id` String,
    `tenant` String,
    `event_type` String,
    `user` String,
    `event_time` DateTime64(3, 'UTC'),
    `source_record_id` String,
    `assigned_on` Nullable(DateTime64(3, 'UTC')),
    `record_owner` Nullable(String),
    `message` String,
    `_topic_partition` Int32,
    `_topic_offset` Int64,
    `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, event_id);

CREATE TABLE IF NOT EXISTS {db}.crm_entities
(
    `event_id` String,
    `tenant` String,
    `entity_type` LowCardinality(String),
    `entity_id` String,
    `name` String,
    `email` Nullable(String),
    `company_id` Nullable(String),
    `owner` Nullable(String),
    `status` Nullable(String),
    `assigned_on` Nullable(DateTime64(3, 'UTC')),
    `updated_at` DateTime64(3, 'UTC'),
    `deleted` Bool,
    `_topic_partition` Int32,
    `_topic_offset` Int64,
    `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, event_id);

CREATE TABLE IF NOT EXISTS {db}.campaigns
(
    `event_id` String,
    `tenant` String,
    `campaign_id` String,
    `name` String,
    `cost` Float64,
    `currency` String,
    `started_at` Nullable(DateTime64(3, 'UTC')),
    `updated_at` DateTime64(3, 'UTC'),
    `_topic_partition` Int32,
    `_topic_offset` Int64,
    `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, event_id);

CREATE TABLE IF NOT EXISTS {db}.conversions
(
    `event_id` String,
    `tenant` String,
    `campaign_id` String,
    `recipient` Nullable(String),
    `message_id` Nullable(String),
    `revenue` Float64,
    `currency` String,
    `event_time` DateTime64(3, 'UTC'),
    `_topic_partition` Int32,
    `_topic_offset` Int64,
    `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, event_id);

CREATE TABLE IF NOT EXISTS {db}.deadletter
(
    `event_id` String,
    `source_topic` String,
    `source_partition` Int32,
    `source_offset` Int64,
    `key` Nullable(String),
    `value` String,
    `reason` String,
    `error` String,
    `agent` String,
    `failed_at` DateTime64(3, 'UTC'),
    `_topic_partition` Int32,
    `_topic_offset` Int64,
    `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (event_id);

-- 0005: people's corrections of the correlation (topic corrections), as they were made.
CREATE TABLE IF NOT EXISTS {db}.corrections
(
    `event_id` String,
    `tenant` String,
    `action` LowCardinality(String),
    `message_id` String,
    `other_message_id` Nullable(String),
    `author` String,
    `reason` String,
    `created_at` DateTime64(3, 'UTC'),
    `_topic_partition` Int32,
    `_topic_offset` Int64,
    `_inserted_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant, event_id);

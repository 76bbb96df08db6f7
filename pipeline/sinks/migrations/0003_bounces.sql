-- 0003: bounces (tracking.events v2: kind 'bounce', bounce_kind, bounce_reason) and their
-- counts per campaign and day.
ALTER TABLE {db}.tracking_events
    ADD COLUMN IF NOT EXISTS `bounce_kind` Nullable(String) AFTER `probably_forwarded`,
    ADD COLUMN IF NOT EXISTS `bounce_reason` Nullable(String) AFTER `bounce_kind`;

ALTER TABLE {db}.campaign_daily
    ADD COLUMN IF NOT EXISTS `hard_bounces` AggregateFunction(uniqExact, String),
    ADD COLUMN IF NOT EXISTS `soft_bounces` AggregateFunction(uniqExact, String);

-- A materialized view cannot be altered: replaced, with the same measures plus bounces (distinct
-- recipients per mail, so a bounce reported twice counts once).
DROP VIEW IF EXISTS {db}.campaign_daily_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.campaign_daily_mv TO {db}.campaign_daily AS
SELECT
    tenant,
    ifNull(campaign_id, '') AS campaign_id,
    toDate(event_time) AS day,
    uniqExactIfState(event_id, kind = 'open' AND NOT is_machine) AS human_opens,
    uniqExactIfState(event_id, kind = 'open' AND is_machine) AS machine_opens,
    uniqExactIfState(recipient, kind = 'open' AND NOT is_machine) AS unique_human_openers,
    uniqExactIfState(event_id, kind = 'click' AND NOT is_machine) AS human_clicks,
    uniqExactIfState(event_id, kind = 'click' AND is_machine) AS machine_clicks,
    uniqExactIfState(recipient, kind = 'click' AND NOT is_machine) AS unique_human_clickers,
    uniqExactIfState(concat(message_id, ' ', recipient), kind = 'bounce' AND ifNull(bounce_kind, '') = 'hard') AS hard_bounces,
    uniqExactIfState(concat(message_id, ' ', recipient), kind = 'bounce' AND ifNull(bounce_kind, '') = 'soft') AS soft_bounces
FROM {db}.tracking_events
GROUP BY tenant, campaign_id, day;

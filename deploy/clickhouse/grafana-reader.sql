-- A read-only ClickHouse user for Grafana, and row policies so that a department (tenant) sees
-- only its own mail. Replace the password (or use a hashed one) before applying; one
-- reader per tenant follows the same pattern with its own row policies.
CREATE USER IF NOT EXISTS grafana_reader IDENTIFIED WITH sha256_password BY 'change-me'
    SETTINGS readonly = 1;
GRANT SELECT ON threadline.* TO grafana_reader;

-- Example: the support department's reader sees tenant 'support' only, in every table.
CREATE USER IF NOT EXISTS reader_support IDENTIFIED WITH sha256_password BY 'change-me' SETTINGS readonly = 1;
GRANT SELECT ON threadline.* TO reader_support;
CREATE ROW POLICY IF NOT EXISTS support_only_correlated ON threadline.mail_correlated_current
    FOR SELECT USING tenant = 'support' TO reader_support;
CREATE ROW POLICY IF NOT EXISTS support_only_responses ON threadline.mail_responses_current
    FOR SELECT USING tenant = 'support' TO reader_support;
CREATE ROW POLICY IF NOT EXISTS support_only_untracked ON threadline.mail_untracked_current
    FOR SELECT USING tenant = 'support' TO reader_support;
CREATE ROW POLICY IF NOT EXISTS support_only_escalations ON threadline.escalations
    FOR SELECT USING tenant = 'support' TO reader_support;
CREATE ROW POLICY IF NOT EXISTS support_only_tracking ON threadline.tracking_events
    FOR SELECT USING tenant = 'support' TO reader_support;
CREATE ROW POLICY IF NOT EXISTS support_only_campaigns ON threadline.campaign_daily
    FOR SELECT USING tenant = 'support' TO reader_support;

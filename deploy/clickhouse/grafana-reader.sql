-- Read-only ClickHouse access for Grafana: one user per tenant (department), each seeing only
-- its own tenant's rows in every table and view of the threadline database.
--
-- How the tenant is decided: a reader's user name is `reader_<tenant>` (quote names with other
-- characters: `reader_tenant-1`), and every row policy compares the row's tenant with
-- substring(currentUser(), 8). A session cannot change its user name, so no setting, query
-- text or dashboard variable can widen what it sees; a user without the reader_ prefix sees
-- nothing. The policies belong to the role threadline_tenant_reader, and SELECT is granted to
-- that role only, never to a user: a session that disables the role loses the grant with it.
--
-- Every table and view has a policy, because a table without one is readable in full by anyone
-- with SELECT on it. tests/deploy/test_reader_policies.py lists the tables of a migrated
-- database and fails when one has no policy here, so a migration that adds a table must add
-- its policy too. Apply this file as an admin; row policies may be created before the sink has
-- created the tables. It creates no user: a shipped password would be public.

CREATE ROLE IF NOT EXISTS threadline_tenant_reader;
GRANT SELECT ON threadline.* TO threadline_tenant_reader;

-- Topic tables (0001).
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.mail_correlated FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.mail_untracked FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.mail_responses FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.tracking_events FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.escalations FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.alerts FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.crm_entities FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.campaigns FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.conversions FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
-- People's corrections of the correlation (0005).
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.corrections FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
-- SLA targets (0008): their events and the one-row-per-target view.
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.sla_events FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.sla_targets_latest FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
-- Dead letters have no tenant column: the record's Kafka key is its tenant (every topic is
-- keyed by tenant). A dead letter without a key is shown to no tenant.
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.deadletter FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND key = substring(currentUser(), 8) TO threadline_tenant_reader;

-- Newest generation per mail, their materialized views and views (0002). A view runs its
-- query under the reader's policies on the tables below it, but reading a materialized view
-- does NOT apply the policy of the table it writes to (seen on ClickHouse 26.9): each needs
-- its own.
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.mail_correlated_current FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.mail_correlated_current_mv FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.mail_correlated_latest FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.mail_untracked_current FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.mail_untracked_current_mv FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.mail_untracked_latest FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.mail_responses_current FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.mail_responses_current_mv FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.mail_responses_latest FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;

-- Rollups and the materialized views that fill them (0002, 0003).
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.campaign_daily FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.campaign_daily_mv FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.response_daily FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.response_daily_mv FOR SELECT
    USING startsWith(currentUser(), 'reader_') AND tenant = substring(currentUser(), 8) TO threadline_tenant_reader;

-- Migration bookkeeping holds no tenant data and no dashboard reads it.
CREATE ROW POLICY IF NOT EXISTS tenant_reader ON threadline.schema_migrations FOR SELECT
    USING 0 TO threadline_tenant_reader;

-- One user per tenant, holding nothing but the role, each with its own long random password.
-- docker-compose creates reader_default (tenant 'default', the one every command uses when none
-- is given; its Grafana logs in as it) with deploy/clickhouse/reader-users.sh, from
-- GRAFANA_READER_PASSWORD. Another tenant, e.g. support:
--   CREATE USER IF NOT EXISTS reader_support IDENTIFIED WITH sha256_password BY '<a long random password>' SETTINGS readonly = 1;
--   GRANT threadline_tenant_reader TO reader_support;

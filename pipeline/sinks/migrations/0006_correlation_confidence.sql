-- 0006: how sure every correlation is (mail.correlated v2: confidence). Rows written before it
-- read 1.0, the schema's default. The newest-generation copy first: its materialized view
-- (SELECT *) hands it every column the source has, so the copy must have the column before the
-- source does.
ALTER TABLE {db}.mail_correlated_current
    ADD COLUMN IF NOT EXISTS `confidence` Float64 DEFAULT 1.0 AFTER `candidate_count`;

ALTER TABLE {db}.mail_correlated
    ADD COLUMN IF NOT EXISTS `confidence` Float64 DEFAULT 1.0 AFTER `candidate_count`;

-- A view keeps the columns its SELECT * had when it was created: created again to show the new one.
CREATE OR REPLACE VIEW {db}.mail_correlated_latest AS
SELECT * FROM {db}.mail_correlated_current FINAL;

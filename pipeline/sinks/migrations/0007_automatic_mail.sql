-- 0007: which kind of automatic mail each correlated mail is (mail.correlated v3: automatic;
-- pipeline/mail/automatic.py lists the kinds). Rows written before it read '', a person's mail,
-- the schema's default. The newest-generation copy first, as in 0006: its materialized view
-- (SELECT *) hands it every column the source has.
ALTER TABLE {db}.mail_correlated_current
    ADD COLUMN IF NOT EXISTS `automatic` String DEFAULT '' AFTER `confidence`;

ALTER TABLE {db}.mail_correlated
    ADD COLUMN IF NOT EXISTS `automatic` String DEFAULT '' AFTER `confidence`;

-- A view keeps the columns its SELECT * had when it was created: created again to show the new one.
CREATE OR REPLACE VIEW {db}.mail_correlated_latest AS
SELECT * FROM {db}.mail_correlated_current FINAL;

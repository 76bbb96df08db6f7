-- 0004: dead letters keep an excerpt of what failed and a pointer to the whole record
-- (deadletter v2: value_size, value_sha256, source_ref).
ALTER TABLE {db}.deadletter
    ADD COLUMN IF NOT EXISTS `value_size` Int64 AFTER `failed_at`,
    ADD COLUMN IF NOT EXISTS `value_sha256` String AFTER `value_size`,
    ADD COLUMN IF NOT EXISTS `source_ref` String AFTER `value_sha256`;

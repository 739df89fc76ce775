-- Case-insensitive search (data and error substrings) folds case the same way whatever
-- the database's locale: a cluster created with LC_CTYPE=C folds only ASCII, so
-- 'jörg müller' or 'москва' found nothing there. Both sides are lower-cased with one
-- explicit collation (ICU's root locale where PostgreSQL has ICU, as Debian's and the
-- PGDG builds do; a UTF-8 libc locale otherwise) and compared with LIKE. pg_trgm builds
-- its trigrams from the already lower-cased text, so the indexes serve these searches.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu') THEN
        CREATE COLLATION provisioning_fold FROM "und-x-icu";
    ELSIF EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'C.utf8') THEN
        CREATE COLLATION provisioning_fold FROM "C.utf8";
    ELSE
        RAISE WARNING 'no ICU or C.utf8 collation: case-insensitive search folds ASCII only';
        CREATE COLLATION provisioning_fold FROM "C";
    END IF;
END
$$;

DROP INDEX execution_logs_data_trgm_idx;
CREATE INDEX execution_logs_data_trgm_idx ON execution_logs
    USING gin ((lower(data_sent::text COLLATE provisioning_fold)) gin_trgm_ops);
DROP INDEX execution_logs_error_trgm_idx;
CREATE INDEX execution_logs_error_trgm_idx ON execution_logs
    USING gin ((lower(error COLLATE provisioning_fold)) gin_trgm_ops) WHERE error <> '';

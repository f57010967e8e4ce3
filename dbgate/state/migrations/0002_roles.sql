-- Group roles that reviewers are granted. Roles are cluster-wide and creating them
-- needs CREATEROLE: where the migrating role lacks it, the operator creates them
-- (docs/audit.md) and this step only says so.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dbgate_auditor') THEN
        BEGIN
            CREATE ROLE dbgate_auditor NOLOGIN;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'dbgate: cannot create role dbgate_auditor (no CREATEROLE); create it to give reviewers read access';
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dbgate_auditor') THEN
        GRANT USAGE ON SCHEMA dbgate TO dbgate_auditor;
    END IF;
END
$$;

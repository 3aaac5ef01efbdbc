-- Listed accounts with no latest snapshot, kept by triggers, so the refresher finds
-- never-fetched accounts by index instead of walking every account that has one (a
-- claim that cost what the tenant had already fetched), and claims lock the row that
-- storing the first snapshot deletes, so two replicas never both take it.
CREATE TABLE unfetched_accounts (
    tenant_id BIGINT NOT NULL,
    stripeid  TEXT NOT NULL,
    -- No foreign key: rows are removed with their account by trigger below, and a
    -- claim joins stripe_accounts anyway.
    PRIMARY KEY (tenant_id, stripeid)
);

INSERT INTO unfetched_accounts (tenant_id, stripeid)
SELECT a.tenant_id, a.stripeid FROM stripe_accounts a
WHERE NOT EXISTS (SELECT 1 FROM latest_balances l
                  WHERE l.tenant_id = a.tenant_id AND l.stripeid = a.stripeid);

-- A new account has no snapshot yet.
CREATE FUNCTION unfetched_on_account_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO unfetched_accounts (tenant_id, stripeid)
    SELECT tenant_id, stripeid FROM new_rows ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER stripe_accounts_unfetched_insert AFTER INSERT ON stripe_accounts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION unfetched_on_account_insert();

CREATE FUNCTION unfetched_on_account_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM unfetched_accounts u USING old_rows o
    WHERE u.tenant_id = o.tenant_id AND u.stripeid = o.stripeid;
    RETURN NULL;
END $$;
CREATE TRIGGER stripe_accounts_unfetched_delete AFTER DELETE ON stripe_accounts
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION unfetched_on_account_delete();

-- The first snapshot that becomes an account's latest takes it off the list; a
-- latest forgotten (the account removed; relisted later) puts it back.
CREATE FUNCTION unfetched_on_latest_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM unfetched_accounts u USING new_rows n
    WHERE u.tenant_id = n.tenant_id AND u.stripeid = n.stripeid;
    RETURN NULL;
END $$;
CREATE TRIGGER latest_balances_unfetched_insert AFTER INSERT ON latest_balances
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION unfetched_on_latest_insert();

CREATE FUNCTION unfetched_on_latest_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO unfetched_accounts (tenant_id, stripeid)
    SELECT o.tenant_id, o.stripeid FROM old_rows o
    WHERE EXISTS (SELECT 1 FROM stripe_accounts a
                  WHERE a.tenant_id = o.tenant_id AND a.stripeid = o.stripeid)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER latest_balances_unfetched_delete AFTER DELETE ON latest_balances
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION unfetched_on_latest_delete();

-- The audit log keeps who did what for its twelve months, but the address
-- and program of a person who is forgotten are personal data: the one
-- change the append-only trigger now lets through is erasing those two
-- columns of a row (the audit projection does it on `user_forgotten`, so
-- the live log equals a rebuild, whose sealed metadata no longer opens).
-- Every other UPDATE, any DELETE and TRUNCATE are still refused.
CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND TG_LEVEL = 'ROW'
       AND NEW.ip_address IS NULL AND NEW.user_agent IS NULL
       AND to_jsonb(NEW) - 'ip_address' - 'user_agent'
           = to_jsonb(OLD) - 'ip_address' - 'user_agent' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_logs is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

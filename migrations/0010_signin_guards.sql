-- The time step of the last MFA code a sign-in of the user accepted: a
-- code is good once. Kept by the inline projection of session_started
-- (which carries the step), and updated only upwards, so of two
-- concurrent sign-ins with one code, the second finds it taken.
ALTER TABLE auth_users ADD COLUMN mfa_last_step bigint;

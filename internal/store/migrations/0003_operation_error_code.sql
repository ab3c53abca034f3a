-- 0003_operation_error_code: the wire error code of a failed operation
-- (not_found, invalid, ...), so a late `op wait` after a daemon restart
-- still exits with the right status. '' = none (or recorded before 0003).
ALTER TABLE operations ADD COLUMN error_code TEXT NOT NULL DEFAULT '';

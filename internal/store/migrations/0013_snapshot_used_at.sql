-- 0013_snapshot_used_at: when a create last restored the snapshot (unix
-- nanoseconds, 0 never). The daemon keeps a few warm snapshots per image
-- and drops the least recently used first (by used_at, else created_at).
ALTER TABLE snapshots ADD COLUMN used_at INTEGER NOT NULL DEFAULT 0;

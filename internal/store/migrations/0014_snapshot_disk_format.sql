-- 0014_snapshot_disk_format: the format of a snapshot's saved disk. 'raw':
-- the VM's disk flattened, standalone (snapshots/<id>/disk.raw; every
-- snapshot before this). 'qcow2': only the VM's own clusters, backed by
-- the image file (snapshots/<id>/disk.qcow2; an image's warm snapshot,
-- which goes with its image).
ALTER TABLE snapshots ADD COLUMN disk_format TEXT NOT NULL DEFAULT 'raw';

-- 0012_snapshots: a VM's memory and disk saved at one moment (`ember
-- snapshot create`). Its files live in <state>/snapshots/<id>/ (the
-- hypervisor's saved state and the disk flattened); the row records what
-- a restore must match: the hypervisor (its version), accelerator, memory
-- and vCPUs, and the image (by ID, so a replaced image shows), plus the
-- saved VM's hypervisor spec and its agent's host key, which the first
-- dial of a restored VM must meet.
CREATE TABLE snapshots (
    name           TEXT    PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    vm_name        TEXT    NOT NULL,
    image          TEXT    NOT NULL,
    image_id       TEXT    NOT NULL,
    kernel         TEXT    NOT NULL,
    cpus           INTEGER NOT NULL,
    memory_mib     INTEGER NOT NULL,
    disk_bytes     INTEGER NOT NULL,
    net_mode       TEXT    NOT NULL,
    accel          TEXT    NOT NULL,
    hypervisor     TEXT    NOT NULL,
    agent_host_key TEXT    NOT NULL,
    config         TEXT    NOT NULL CHECK (json_valid(config)),
    image_config   TEXT    CHECK (image_config IS NULL OR json_valid(image_config)),
    created_at     INTEGER NOT NULL
) STRICT;

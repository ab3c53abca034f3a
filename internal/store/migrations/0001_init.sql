-- 0001_init: the first schema. Tables are STRICT so a wrong Go type is an
-- error instead of silently stored text. Times are INTEGER unix nanoseconds
-- (UTC); 0 means "unset". JSON columns are TEXT, NULL when empty.

-- Guest kernels known to the daemon (host kernel, unpacked distro package,
-- imported file). Images and VMs refer to them by name.
CREATE TABLE kernels (
    name        TEXT    NOT NULL PRIMARY KEY CHECK (name <> ''),
    release     TEXT    NOT NULL DEFAULT '',  -- uname -r of the kernel
    source      TEXT    NOT NULL DEFAULT '',  -- host | package | import ...
    vmlinuz     TEXT    NOT NULL,             -- absolute path to the kernel image
    modules_dir TEXT    NOT NULL DEFAULT '',  -- absolute path to lib/modules/<release>
    created_at  INTEGER NOT NULL
) STRICT;

-- Root filesystems VMs boot from.
CREATE TABLE images (
    name       TEXT    NOT NULL PRIMARY KEY CHECK (name <> ''),
    kind       TEXT    NOT NULL,              -- builtin | registered | built | promoted
    path       TEXT    NOT NULL,              -- absolute path to the disk file
    format     TEXT    NOT NULL,              -- raw | qcow2
    size_bytes INTEGER NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    kernel     TEXT    NOT NULL DEFAULT '',   -- kernel name, '' = use the default
    created_at INTEGER NOT NULL,
    meta       TEXT CHECK (meta IS NULL OR json_valid(meta))
) STRICT;

-- Virtual machines. vms.image and vms.kernel are deliberately not foreign
-- keys: a VM's disk is an independent clone, so a forced image delete must
-- be possible; "in use" is checked by the daemon via the index below.
CREATE TABLE vms (
    id         TEXT    NOT NULL PRIMARY KEY CHECK (id <> ''),
    name       TEXT    NOT NULL UNIQUE CHECK (name <> ''),
    state      TEXT    NOT NULL,              -- creating | running | stopped | error
    image      TEXT    NOT NULL DEFAULT '',
    kernel     TEXT    NOT NULL DEFAULT '',
    cpus       INTEGER NOT NULL DEFAULT 0 CHECK (cpus >= 0),
    memory_mib INTEGER NOT NULL DEFAULT 0 CHECK (memory_mib >= 0),
    disk_bytes INTEGER NOT NULL DEFAULT 0 CHECK (disk_bytes >= 0),
    net_mode   TEXT    NOT NULL DEFAULT '',
    ssh_port   INTEGER NOT NULL DEFAULT 0,
    pid        INTEGER NOT NULL DEFAULT 0,    -- hypervisor process, 0 = none
    pid_start  INTEGER NOT NULL DEFAULT 0,    -- its start time (/proc/<pid>/stat field 22)
    accel      TEXT    NOT NULL DEFAULT '',   -- kvm | tcg
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_error TEXT    NOT NULL DEFAULT '',
    config     TEXT CHECK (config IS NULL OR json_valid(config))  -- hypervisor spec snapshot
) STRICT;
CREATE INDEX vms_created_at ON vms (created_at);
CREATE INDEX vms_image ON vms (image);

-- Asynchronous operations (vm.create, image.build, ...). Running ones are
-- failed at daemon start; finished ones are pruned by age.
CREATE TABLE operations (
    id          TEXT    NOT NULL PRIMARY KEY CHECK (id <> ''),
    kind        TEXT    NOT NULL,
    target      TEXT    NOT NULL DEFAULT '',
    state       TEXT    NOT NULL,             -- running | succeeded | failed | cancelled
    progress    TEXT    NOT NULL DEFAULT '',
    error       TEXT    NOT NULL DEFAULT '',
    result      TEXT CHECK (result IS NULL OR json_valid(result)),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    finished_at INTEGER                        -- NULL while unfinished
) STRICT;
CREATE INDEX operations_created_at ON operations (created_at);
CREATE INDEX operations_finished_at ON operations (finished_at);

// Package store is ember's persistent state: VMs, images, kernels and
// asynchronous operations, kept in one SQLite database (pure-Go driver
// modernc.org/sqlite, so the binary stays static).
//
// # Schema (version 7: migrations/0001_init.sql, 0002_leases.sql,
// 0003_operation_error_code.sql, 0004_vm_accel_reason.sql,
// 0005_vm_agent_host_key.sql, 0006_kernel_default.sql,
// 0007_vm_restart_policy.sql)
//
//	kernels    (name PK, release, source, vmlinuz, modules_dir, created_at,
//	            is_default: 1 on the one kernel made the default on request)
//	           indexes: kernels(is_default) UNIQUE WHERE is_default = 1
//	images     (name PK, kind, path, format, size_bytes, kernel, created_at, meta JSON)
//	vms        (id PK, name UNIQUE, state, image, kernel, cpus, memory_mib,
//	            disk_bytes, net_mode, ssh_port, pid, pid_start, accel,
//	            created_at, updated_at, last_error, config JSON,
//	            accel_reason, agent_host_key: the agent's pinned SSH host key,
//	            restart_policy: no | always | on-failure at daemon start,
//	            stopped_by: user | guest | crash, how a stopped VM stopped,
//	            image_config JSON, caps JSON,
//	            ssh_keys JSON: the user's public keys its agent accepts)
//	           indexes: vms(created_at), vms(image)
//	operations (id PK, kind, target, state, progress, error, result JSON,
//	            created_at, updated_at, finished_at NULL while unfinished,
//	            error_code: the wire code of a failure, '' if none)
//	           indexes: operations(created_at), operations(finished_at)
//	leases     (ip PK, vm_id UNIQUE REFERENCES vms(id) ON DELETE CASCADE,
//	            mac, tap, created_at)   -- tap-mode guest addresses
//	snapshots  (name PK, id UNIQUE, vm_name, image, image_id, kernel, cpus,
//	            memory_mib, disk_bytes, net_mode, accel, hypervisor,
//	            agent_host_key, config JSON, image_config JSON, created_at,
//	            used_at: when a create last restored it, 0013,
//	            disk_format: raw | qcow2, its saved disk's, 0014)
//	           -- 0012: a VM's saved memory and disk, files in snapshots/<id>
//
// Conventions: every table is STRICT; times are INTEGER unix nanoseconds in
// UTC with 0 meaning unset (only operations.finished_at is nullable); JSON
// columns are TEXT checked with json_valid and NULL when empty; enumerated
// values (states, kinds, formats) are plain TEXT documented in the SQL and in
// the Go constants, not CHECK constraints, because SQLite cannot alter a
// CHECK without rebuilding the table. vms.image and vms.kernel are not
// foreign keys on purpose: a VM disk is an independent clone, so a forced
// image delete must stay possible (ImageInUse is the advisory check).
//
// # Migrations
//
// migrations/NNNN_name.sql files are embedded and applied in order, each in
// its own IMMEDIATE transaction together with the PRAGMA user_version bump,
// so a crash mid-migration leaves the previous version intact. A database
// whose user_version is newer than this binary knows is refused. To extend
// the schema add the next file. foreign_keys is on for every connection, so
// the leases cascade works with no change to DeleteVM: deleting a VM row
// frees its address in the same statement.
//
// # Connections and atomicity
//
// The database runs in WAL mode with synchronous=FULL. Writes go through a
// pool of exactly one connection: writers in this process queue in Go
// instead of spinning in SQLite's busy handler, and a read-modify-write in
// WithTx can never hit SQLITE_BUSY on lock upgrade. Reads use a separate
// read-only pool, which WAL lets run concurrently with the writer. Every
// connection sets busy_timeout and write transactions BEGIN IMMEDIATE, which
// covers other processes (e.g. a doctor run) opening the same file. Each
// Store write is one SQL statement and hence its own transaction; WithTx
// groups several. Inside a WithTx callback use only the *Tx: a write through
// the *Store would wait for the single writer connection the Tx holds.
package store

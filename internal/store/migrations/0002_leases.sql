-- 0002_leases: guest IP leases of tap-mode VMs. One lease per VM and one VM
-- per address; the lease goes with its VM (ON DELETE CASCADE), so deleting
-- a VM row can never leave an address taken. The TAP interface a VM holds
-- is kept beside its lease so a restarted daemon knows which pool TAPs are
-- in use.
CREATE TABLE leases (
    ip         TEXT    NOT NULL PRIMARY KEY CHECK (ip <> ''),   -- dotted IPv4 address
    vm_id      TEXT    NOT NULL UNIQUE REFERENCES vms (id) ON DELETE CASCADE,
    mac        TEXT    NOT NULL DEFAULT '',                     -- guest MAC address
    tap        TEXT    NOT NULL DEFAULT '',                     -- host TAP interface, '' = none yet
    created_at INTEGER NOT NULL
) STRICT;

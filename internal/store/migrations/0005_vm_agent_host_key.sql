-- 0005_vm_agent_host_key: the host key of the VM's guest agent, pinned at
-- its boot (authorized_keys form, "ssh-ed25519 AAAA..."). The daemon
-- refuses an agent that does not hold it until the VM boots again, which
-- records a new one. '' = none recorded yet (a VM that is not running, or
-- one started before 0005: its next dial records the key it meets).
ALTER TABLE vms ADD COLUMN agent_host_key TEXT NOT NULL DEFAULT '';

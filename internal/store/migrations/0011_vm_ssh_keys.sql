-- 0011_vm_ssh_keys: the user's public keys a VM's agent accepts beside the
-- daemon's (`ember create --ssh-key`), a JSON array of authorized_keys
-- lines without comments; NULL when there are none.
ALTER TABLE vms ADD COLUMN ssh_keys TEXT CHECK (ssh_keys IS NULL OR json_valid(ssh_keys));

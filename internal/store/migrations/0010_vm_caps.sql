-- 0010_vm_caps: a VM's capabilities (`ember create --cap NAME[=ARG]`, and
-- the ports `ember port add` opened), a JSON array of {"name","arg"} in the
-- order given; the daemon applies them again at every boot and re-attach.
ALTER TABLE vms ADD COLUMN caps TEXT CHECK (caps IS NULL OR json_valid(caps));

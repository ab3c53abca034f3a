-- 0007_vm_restart_policy: whether the daemon starts a VM again when the
-- daemon starts (`ember create --restart`): 'always'; 'on-failure', only
-- when its process ended without the guest powering off; '' or 'no',
-- never. And how a stopped VM stopped: 'user' (`ember stop`), 'guest' (the
-- guest powered off), 'crash' (its process ended otherwise: killed, a host
-- crash or reboot); '' while it runs, or not known (stopped before 0007).
ALTER TABLE vms ADD COLUMN restart_policy TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN stopped_by TEXT NOT NULL DEFAULT '';

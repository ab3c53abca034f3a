-- 0004_vm_accel_reason: why a VM runs under its accelerator (the probe's
-- answer, the config, or a KVM boot that showed no progress and fell back
-- to TCG). '' = not recorded (VMs created before 0004).
ALTER TABLE vms ADD COLUMN accel_reason TEXT NOT NULL DEFAULT '';

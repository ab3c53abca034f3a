-- 0006_kernel_default: the kernel a VM boots when neither the VM nor the
-- config names one, set only when someone asks (`ember kernel default
-- NAME`, `ember kernel import --default`): importing a kernel never makes
-- it the default by itself. 1 = the default; at most one kernel holds it.
-- None (every database before 0006): the newest fetched kernel, else the
-- host's.
ALTER TABLE kernels ADD COLUMN is_default INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX kernels_default ON kernels (is_default) WHERE is_default = 1;

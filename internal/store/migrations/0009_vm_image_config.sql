-- 0009_vm_image_config: the image config (images.config's shape: env,
-- working_dir, user) a VM was created with, copied at create so a later
-- change or removal of its image does not change how commands run in it.
ALTER TABLE vms ADD COLUMN image_config TEXT CHECK (image_config IS NULL OR json_valid(image_config));

-- 0008_image_metadata: what the images issue needs to know of an image.
-- id: a random 32-hex-digit identity, new whenever the name is given new
-- content (so a cache or a VM can tell a rebuilt image from the old one);
-- parent: the image it was built, imported onto or promoted from ('' none);
-- recipe_digest: sha256 of the recipe it was built from ('' not built);
-- config: what exec and sessions in its VMs start with, the OCI image
-- config's names: {"env": ["K=V"...], "working_dir": "/", "user": "root"}.
ALTER TABLE images ADD COLUMN id TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN parent TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN recipe_digest TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN config TEXT CHECK (config IS NULL OR json_valid(config));
UPDATE images SET id = lower(hex(randomblob(16))) WHERE id = '';
CREATE UNIQUE INDEX images_by_id ON images (id) WHERE id <> '';
CREATE INDEX images_by_parent ON images (parent) WHERE parent <> '';

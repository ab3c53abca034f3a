// Package kernel manages guest kernels and the small per-kernel initramfs
// ember boots them with.
//
// A kernel lives in its own folder under the kernels root:
//
//	<root>/<name>/vmlinuz       the bzImage
//	<root>/<name>/modules/      the contents of lib/modules/<release> (optional)
//	<root>/<name>/kernel.json   name, release and source
//
// Folders are installed by renaming a finished temporary folder, so a failed
// or cancelled fetch or import leaves nothing behind. The host's own kernel is
// referenced in place (read only) and never copied.
//
// An import (Importer) copies from files that are already open, so the
// daemon reads with its client's rights, never a path; the tree's paths
// stay inside it, symlinks that point out are not kept, sizes are bounded.
// A kernel's modules folder is only ever read through an os.Root of it.
//
// BuildInitramfs writes a deterministic gzip-compressed newc archive holding
// the guest agent as /init and the virtio modules the agent loads, so the
// daemon can cache it under a name derived from InitramfsKey.
package kernel

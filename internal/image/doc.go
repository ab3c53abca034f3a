// Package image builds and inspects root file system images. Its first job
// is the built-in default image "tiny": a static busybox, the ember guest
// agent and a few /etc files, packed into a sparse raw ext4 file with
// mkfs.ext4 -d, so nothing is ever mounted on the host.
package image

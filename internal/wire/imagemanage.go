package wire

// image.register is a stream for the same reason as kernel.import
// (kernelimport.go): the daemon never opens a path a client names. Right
// after the stream opens the client sends one descriptor message
// (SendFDs) holding the root file system file, opened with its own
// rights, and, when KernelFile is set, the kernel file after it; the daemon checks and copies it, then answers with a
// FrameStdout holding the registered Image as JSON and a FrameExit, or
// with a FrameExit carrying the error.

// ImageRegisterParams names the image and says where its file came from
// (Rootfs is for messages only).
type ImageRegisterParams struct {
	Name   string `json:"name"`
	Rootfs string `json:"rootfs,omitempty"`
	// Kernel is the name of a kernel (`ember kernel ls`) the image's VMs
	// boot unless create names another; "" for the default kernel.
	Kernel string `json:"kernel,omitempty"`
	// KernelFile says a kernel file (a bzImage) comes as the second
	// descriptor, to become the image's own kernel; the path is for
	// messages only. At most one of Kernel and KernelFile.
	KernelFile string `json:"kernel_file,omitempty"`
}

// ImageRemoveParams names the image to remove.
type ImageRemoveParams struct {
	Name  string `json:"name"`
	Force bool   `json:"force,omitempty"`
}

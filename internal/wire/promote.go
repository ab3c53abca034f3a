package wire

// ImagePromoteParams asks for a new image made from a VM's disk
// (`ember image promote VM NAME`): a consistent copy taken while the
// guest's filesystems are frozen, or while the VM is stopped; the VM
// keeps running.
type ImagePromoteParams struct {
	VM   string `json:"vm"`   // name or ID prefix
	Name string `json:"name"` // the new image's name
}

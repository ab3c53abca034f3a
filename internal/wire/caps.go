package wire

import "fmt"

// Capabilities: `ember create --cap NAME[=ARG]` gives a VM features that act
// at named points of its life (the daemon's vmCaps). Each entry of
// CreateVMParams.Caps is "NAME" or "NAME=ARG"; the daemon's capability of
// that name checks ARG.
const (
	// MaxCaps bounds the capabilities of one VM.
	MaxCaps = 64
	// MaxCapLen bounds one "NAME=ARG".
	MaxCapLen = 4096
)

// checkCaps bounds a VM's capabilities.
func checkCaps(caps []string) error {
	if len(caps) > MaxCaps {
		return fmt.Errorf("at most %d capabilities per vm, not %d", MaxCaps, len(caps))
	}
	for _, c := range caps {
		if len(c) > MaxCapLen {
			return fmt.Errorf("capability %.40q... is longer than %d bytes", c, MaxCapLen)
		}
	}
	return nil
}

// Validate bounds the capabilities and the user's keys.
func (p CreateVMParams) Validate() error {
	if err := checkCaps(p.Caps); err != nil {
		return err
	}
	return checkSSHKeys(p.SSHKeys)
}

// PortParams names a VM and one port forward,
// "[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp]" (`ember port add|rm`); with
// ToHost one forward from the guest to the host,
// "HOSTPORT[:GUESTPORT][/tcp]" (`ember port add|rm --to-host`; rm names
// it by its guest port).
type PortParams struct {
	Ref    string `json:"ref"`
	Spec   string `json:"spec"`
	ToHost bool   `json:"to_host,omitempty"`
}

// Validate bounds the spec.
func (p PortParams) Validate() error {
	if len(p.Spec) > MaxCapLen {
		return fmt.Errorf("port %.40q... is longer than %d bytes", p.Spec, MaxCapLen)
	}
	return nil
}

// Port is one port forward of a VM: connections to HostAddr:HostPort on
// the host reach GuestPort in the guest, through its agent. With ToHost
// it goes the other way: connections in the guest to GuestName:GuestPort
// reach HostAddr:HostPort on the host.
type Port struct {
	VM        string `json:"vm"`
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Proto     string `json:"proto"`
	// Listening is whether the listening side listens now (the VM
	// runs): the host's, or with ToHost the guest's.
	Listening bool `json:"listening"`
	// ToHost: from the guest to the host (the hostport capability).
	ToHost bool `json:"to_host,omitempty"`
	// GuestName is the name the guest connects to (ToHost only).
	GuestName string `json:"guest_name,omitempty"`
}

// Command ember-agent is the guest agent: PID 1 of every ember VM's
// initramfs and the SSH server the daemon talks to. See internal/agent.
package main

import "github.com/emberhq/ember/internal/agent"

func main() {
	agent.Main()
}

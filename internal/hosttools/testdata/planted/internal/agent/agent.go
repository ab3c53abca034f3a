// Package agent stands for the guest agent: its programs run in the VM.
package agent

import "os/exec"

func guest() { _ = exec.Command("planted-never-guest").Run() }

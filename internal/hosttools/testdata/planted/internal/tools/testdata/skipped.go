package testdata

import "os/exec"

func skipped() { _ = exec.Command("planted-never-testdata").Run() }

package main

import "os/exec"

func main() {
	_ = exec.Command("planted-bench").Run() // want planted-bench
	_ = exec.Command("dnsmasq").Run()       // no make bench here: only the table is checked
}

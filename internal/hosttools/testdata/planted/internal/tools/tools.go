// Package tools wraps exec.LookPath: its callers' literals are programs.
package tools

import "os/exec"

// Name is a program named by a constant of another package.
const Name = "planted-cross-const"

// Find looks name up.
func Find(name string) (string, error) { return exec.LookPath(name) }

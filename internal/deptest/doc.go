// Package deptest holds the import rules of the project as a test: the host
// side never links the guest agent, the guest protocol stays a leaf that both
// sides can share, and the CLI reaches the daemon package only through its
// documented surface and never imports a hypervisor driver. The rules and
// the reason for each are in deptest_test.go.
package deptest

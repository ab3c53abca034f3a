// Package guest is the host side of the ember guest agent: it dials the
// agent's SSH server inside a VM with the daemon's key, waits for a booting
// guest to become ready, runs commands with their exit status passed
// through, opens SFTP and asks the guest to power off.
//
// The wire conventions (the ember-exec JSON payload, ember-poweroff and the
// ember.key encoding) are defined by package agent and only used here.
package guest

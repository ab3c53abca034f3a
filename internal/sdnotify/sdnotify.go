// Package sdnotify tells systemd how the daemon is doing when it runs as a
// Type=notify service (dist/ember.service): READY=1 once it answers on its
// socket, STOPPING=1 when it shuts down. It is sd_notify(3)'s protocol,
// one datagram on the unix socket $NOTIFY_SOCKET names, without a
// dependency. Without $NOTIFY_SOCKET (not under systemd, or another
// Type) it does nothing.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// States sent.
const (
	Ready    = "READY=1"
	Stopping = "STOPPING=1"
)

// Notify sends state to the service manager named by $NOTIFY_SOCKET: a
// path, or an abstract socket written with a leading '@'. It returns nil
// when the variable is unset.
func Notify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if addr[0] != '/' && addr[0] != '@' {
		return fmt.Errorf("sdnotify: NOTIFY_SOCKET %q is neither a path nor an abstract socket", addr)
	}
	// Go writes an abstract address with its leading '@'.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer c.Close()
	// A datagram socket never blocks for long; the deadline keeps a
	// wedged manager from holding the daemon.
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	n, err := c.Write([]byte(state))
	if err == nil && n != len(state) {
		err = errors.New("short write")
	}
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	return nil
}

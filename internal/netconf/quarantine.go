package netconf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Quarantine is a VM's TAP taken off the bridge into a network namespace
// of its own, for the moments after a restore: the restored guest still
// has the saved VM's MAC and address, which the bridge's filter refuses
// from this TAP (and which the saved VM may still be using), so the
// daemon reaches its agent there, alone with it, at the saved address.
// The namespace holds only the TAP with the saved gateway's address;
// nothing listens in it and nothing routes out of it. Release puts the
// TAP back on the bridge and ends the namespace (also a TAP left in it:
// the kernel deletes it with the namespace).
type Quarantine struct {
	tap, bridge string
	host, ns    netns.NsHandle
}

// QuarantineTAP moves tap (attached to a running VM) off bridge into a
// new namespace and gives it addr there (the saved guest's gateway, with
// the prefix of its network).
func QuarantineTAP(tap, bridge string, addr *net.IPNet) (_ *Quarantine, err error) {
	host, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("quarantine %s: this namespace: %w", tap, err)
	}
	ns, err := inThread(netns.New) // unshares that thread only
	if err != nil {
		host.Close()
		return nil, fmt.Errorf("quarantine %s: new network namespace: %w", tap, err)
	}
	q := &Quarantine{tap: tap, bridge: bridge, host: host, ns: ns}
	defer func() {
		if err != nil {
			err = errors.Join(err, q.Release())
		}
	}()
	l, err := netlink.LinkByName(tap)
	if err != nil {
		return q, fmt.Errorf("quarantine %s: %w", tap, err)
	}
	if err := netlink.LinkSetNsFd(l, int(ns)); err != nil {
		return q, fmt.Errorf("quarantine %s: move it: %w", tap, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return q, fmt.Errorf("quarantine %s: %w", tap, err)
	}
	defer h.Close()
	if l, err = h.LinkByName(tap); err != nil {
		return q, fmt.Errorf("quarantine %s: %w", tap, err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: addr}); err != nil {
		return q, fmt.Errorf("quarantine %s: address %s: %w", tap, addr, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return q, fmt.Errorf("quarantine %s: bring it up: %w", tap, err)
	}
	return q, nil
}

// inThread runs f on a thread of its own, locked, and puts the thread
// back in its namespace after; a thread that cannot go back is never
// used again: its goroutine ends locked, and Go ends the thread with it.
func inThread[T any](f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			var zero T
			ch <- result{zero, err}
			return
		}
		defer orig.Close()
		v, err := f()
		if serr := netns.Set(orig); serr != nil {
			ch <- result{v, errors.Join(err, fmt.Errorf("back to the daemon's namespace: %w", serr))}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{v, err}
	}()
	r := <-ch
	return r.v, r.err
}

// DialContext connects from inside the quarantine (the socket is made in
// its namespace, on a thread that enters it for the moment).
func (q *Quarantine) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var derr error
	conn, err := inThread(func() (net.Conn, error) {
		if err := netns.Set(q.ns); err != nil {
			return nil, err
		}
		var d net.Dialer
		var c net.Conn
		c, derr = d.DialContext(ctx, network, addr)
		return c, nil
	})
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("dial %s in the quarantine of %s: %w", addr, q.tap, err)
	}
	return conn, derr
}

// Release moves the TAP back onto the bridge, up, and ends the
// namespace. It may be called more than once.
func (q *Quarantine) Release() error {
	if q.ns == netns.None() {
		return nil
	}
	var err error
	if h, herr := netlink.NewHandleAt(q.ns); herr != nil {
		err = herr
	} else {
		if l, lerr := h.LinkByName(q.tap); lerr == nil {
			err = h.LinkSetNsFd(l, int(q.host))
		}
		h.Close()
	}
	if err == nil {
		var h *netlink.Handle
		if h, err = netlink.NewHandleAt(q.host); err == nil {
			err = attachTAP(h, q.tap, q.bridge)
			h.Close()
		}
	}
	q.ns.Close()
	q.host.Close()
	q.ns, q.host = netns.None(), netns.None()
	if err != nil {
		return fmt.Errorf("put tap %s back on %s: %w", q.tap, q.bridge, err)
	}
	return nil
}

// CanQuarantine says why this process cannot quarantine a TAP (making a
// network namespace needs CAP_SYS_ADMIN), or nil.
func CanQuarantine() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read this process's capabilities: %w", err)
	}
	if data[unix.CAP_SYS_ADMIN/32].Effective&(1<<(unix.CAP_SYS_ADMIN%32)) == 0 {
		return errors.New("making a network namespace needs CAP_SYS_ADMIN, which the daemon lacks")
	}
	return nil
}

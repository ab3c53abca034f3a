package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/store"
)

// reidGuest is a restored agent's connection: it records the reidentify
// and answers with its new key, or fails.
type reidGuest struct {
	fakeGuest
	got    *guestproto.Reidentify
	newKey ssh.PublicKey
	fail   error
	closed bool
}

func (g *reidGuest) Reidentify(_ context.Context, r guestproto.Reidentify, entropy []byte) (ssh.PublicKey, error) {
	if len(entropy) < guestproto.MinEntropy {
		return nil, errors.New("too little entropy")
	}
	g.got = &r
	return g.newKey, g.fail
}

func (g *reidGuest) Close() error { g.closed = true; return nil }

// reachNet is a network whose restored guests are reached as reach says.
type reachNet struct {
	*userNet
	reach    restoredReach
	released int
	own      string // the VM's own agent address
}

func (n *reachNet) restored(store.VM, *savedNet) (restoredReach, error) {
	r := n.reach
	r.done = func() error { n.released++; return nil }
	return r, nil
}

func (n *reachNet) agentAddr(store.VM) string { return n.own }

type dialSeen struct {
	addr string
	pin  guest.HostKeyPin
}

// A restored tap guest is dialled at the saved address pinning the saved
// key, handed the VM's network with its new identity, its quarantine
// released, then dialled at its own address pinning the new key; every
// failure releases the quarantine once and closes what it opened.
func TestRestoredGuestTakesItsNetwork(t *testing.T) {
	saved, fresh := testHostKey(t), testHostKey(t)
	mac, _ := net.ParseMAC("52:54:00:e7:00:09")
	netw := &guestproto.ReidentifyNet{MAC: mac, IP: &net.IPNet{IP: net.IPv4(10, 231, 0, 9).To4(), Mask: net.CIDRMask(24, 32)}}
	vm := store.VM{ID: "id1", Name: "tc1"}
	restore := &restoreFrom{HostKey: saved, Saved: &savedNet{IP: net.IPv4(10, 231, 0, 5).To4()}}

	setup := func(first *reidGuest, dialErr error) (*vmService, *reachNet, *[]dialSeen, *reidGuest) {
		nw := &reachNet{userNet: &userNet{}, own: "10.231.0.9:22",
			reach: restoredReach{addr: "10.231.0.5:22", netw: netw,
				dial: func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("unused") }}}
		var seen []dialSeen
		second := &reidGuest{}
		s := &vmService{log: slog.New(slog.DiscardHandler)}
		s.waitGuest = func(_ context.Context, addr string, _ ssh.Signer, pin guest.HostKeyPin, _ func() error) (guestConn, error) {
			seen = append(seen, dialSeen{addr, pin})
			if len(seen) == 1 {
				if dialErr != nil {
					return nil, dialErr
				}
				return first, nil
			}
			if nw.released != 1 {
				t.Errorf("dialled the own address with the quarantine released %d times", nw.released)
			}
			return second, nil
		}
		s.waitRestored = s.waitGuest // the first dial is the restored one's
		return s, nw, &seen, second
	}

	first := &reidGuest{newKey: fresh}
	s, nw, seen, second := setup(first, nil)
	conn, key, err := s.restoredGuest(context.Background(), nw, vm, restore, nil)
	if err != nil {
		t.Fatal(err)
	}
	if conn != second || !keysEqual(key, fresh) || !first.closed || second.closed || nw.released != 1 {
		t.Fatalf("conn %p (second %p), key ok %v, first closed %v, released %d", conn, second, keysEqual(key, fresh), first.closed, nw.released)
	}
	if first.got == nil || first.got.Hostname != "tc1" || first.got.Net != netw {
		t.Fatalf("reidentify asked %+v", first.got)
	}
	if len(*seen) != 2 || (*seen)[0].addr != "10.231.0.5:22" || !keysEqual((*seen)[0].pin.Key, saved) ||
		(*seen)[1].addr != "10.231.0.9:22" || !keysEqual((*seen)[1].pin.Key, fresh) {
		t.Fatalf("dials %+v", *seen)
	}

	// The saved agent refuses: its connection closed, quarantine released.
	first = &reidGuest{fail: errors.New("cannot change the guest's network")}
	s, nw, seen, _ = setup(first, nil)
	if _, _, err := s.restoredGuest(context.Background(), nw, vm, restore, nil); err == nil || !strings.Contains(err.Error(), "network") {
		t.Fatalf("a refused reidentify: %v", err)
	}
	if !first.closed || nw.released != 1 || len(*seen) != 1 {
		t.Fatalf("after a refused reidentify: closed %v, released %d, dials %d", first.closed, nw.released, len(*seen))
	}

	// The saved agent never answers: released all the same.
	s, nw, _, _ = setup(nil, errors.New("timeout"))
	if _, _, err := s.restoredGuest(context.Background(), nw, vm, restore, nil); err == nil || nw.released != 1 {
		t.Fatalf("no answer: %v, released %d", err, nw.released)
	}
}

func keysEqual(a, b ssh.PublicKey) bool {
	return a != nil && b != nil && string(a.Marshal()) == string(b.Marshal())
}

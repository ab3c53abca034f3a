package guest_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
)

// SetClock hands the agent's hook the host's time to the nanosecond; the
// hook's failure comes back with its message; an agent without the hook
// refuses; a time no clock should take is refused before anything is
// sent, and a malformed request sent anyway is refused by the agent
// (exit 125) without reaching the hook.
func TestSetClock(t *testing.T) {
	var mu sync.Mutex
	var got []time.Time
	var hookErr error
	addr, key := startAgentWith(t, agent.ServerConfig{SetClock: func(now time.Time) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, now)
		return hookErr
	}})
	ctx := ctx20(t)
	c, err := guest.WaitReady(ctx, addr, key, guest.HostKeyPin{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	now := time.Unix(1796094434, 123456789)
	if err := c.SetClock(ctx, now); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(got) != 1 || !got[0].Equal(now) {
		t.Errorf("the hook got %v, want [%v]", got, now)
	}
	hookErr = errors.New("set the clock: operation not permitted")
	mu.Unlock()
	if err := c.SetClock(ctx, now); err == nil || !strings.Contains(err.Error(), "operation not permitted") || errors.Is(err, guest.ErrOldAgent) {
		t.Errorf("a hook that fails: %v", err)
	}

	for _, bad := range []time.Time{{}, time.Unix(-1, 0)} {
		if err := c.SetClock(ctx, bad); err == nil {
			t.Errorf("set the clock to %v: no error", bad)
		}
	}
	raw, err := dialAs(addr, guestproto.User, key)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for _, cmd := range []string{guestproto.SetClockCommand, guestproto.SetClockCommand + " 0", guestproto.SetClockCommand + " -5",
		guestproto.SetClockCommand + " 5 6", guestproto.SetClockCommand + " " + strings.Repeat("9", 4096)} {
		s, err := raw.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		out, err := s.CombinedOutput(cmd)
		var exit *ssh.ExitError
		if !errors.As(err, &exit) || exit.ExitStatus() != guestproto.ExitCannotRun || !strings.Contains(string(out), "bad set-clock request") {
			t.Errorf("%.40q: %v: %q", cmd, err, out)
		}
	}
	mu.Lock()
	if len(got) != 2 {
		t.Errorf("the hook was called %d times, want 2: %v", len(got), got)
	}
	mu.Unlock()

	plain := dialFS(t, nil)
	if err := plain.SetClock(ctx, now); err == nil || !strings.Contains(err.Error(), "only available to the agent of a VM") || errors.Is(err, guest.ErrOldAgent) {
		t.Errorf("an agent without the hook: %v", err)
	}
}

// An agent older than the request runs it as a shell command, which is
// not found: SetClock says so with ErrOldAgent.
func TestSetClockOldAgent(t *testing.T) {
	c := impostorServing(t, true, func(ch ssh.Channel, answered <-chan struct{}) {
		<-answered
		ch.Stderr().Write([]byte("sh: 1: ember-setclock: not found\n"))
		ch.SendRequest(guestproto.ReqExitStatus, false, guestproto.ExitStatusPayload(guestproto.ExitNotFound))
	})
	err := c.SetClock(ctx20(t), time.Now())
	if !errors.Is(err, guest.ErrOldAgent) || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("an old agent: %v", err)
	}
}

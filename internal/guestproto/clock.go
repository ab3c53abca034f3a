package guestproto

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// A guest's clock stands still while its VM is stopped (`ember pause`, the
// moment a snapshot's state is saved): once the VM runs again it is that
// long behind the host. The daemon then sends the host's time with one
// exec channel whose command is EncodeSetClock's; the agent steps the
// guest's wall clock (CLOCK_REALTIME) to it, as a reidentify does, and
// ends the channel with exit status 0, or 1 with a message on stderr. An
// agent older than this request runs the command as a shell command,
// which is not found (ExitNotFound): the host takes that status as an old
// agent's.
const SetClockCommand = "ember-setclock"

// maxSetClock bounds a set-clock command line: the command and a time in
// nanoseconds (at most 19 digits).
const maxSetClock = len(SetClockCommand) + 1 + 19

// SetClock is what a set-clock request asks.
type SetClock struct {
	Now time.Time // the host's time, after 1970 and before 2262
}

// EncodeSetClock is the exec command that sets the guest's clock to c.Now.
func EncodeSetClock(c SetClock) (string, error) {
	ns, err := formatNow(c.Now)
	if err != nil {
		return "", fmt.Errorf("set clock: %w", err)
	}
	return SetClockCommand + " " + ns, nil
}

// DecodeSetClock reads a set-clock command: ok is false for any other
// command. The time must be a positive number of nanoseconds since 1970.
func DecodeSetClock(cmd string) (c SetClock, ok bool, err error) {
	rest, ok := strings.CutPrefix(cmd, SetClockCommand+" ")
	if !ok {
		if cmd == SetClockCommand {
			return c, true, fmt.Errorf("bad set-clock request: no time")
		}
		return c, false, nil
	}
	if len(cmd) > maxSetClock {
		return c, true, fmt.Errorf("bad set-clock request: longer than %d bytes", maxSetClock)
	}
	if c.Now, err = parseNow(rest); err != nil {
		return SetClock{}, true, fmt.Errorf("bad set-clock request: %w", err)
	}
	return c, true, nil
}

// formatNow is t as a request carries it: nanoseconds since 1970, which
// must fit an int64 and be positive.
func formatNow(t time.Time) (string, error) {
	if !t.After(time.Unix(0, 0)) || t.After(time.Unix(0, math.MaxInt64)) {
		return "", fmt.Errorf("time %v is not between 1970 and 2262", t)
	}
	return strconv.FormatInt(t.UnixNano(), 10), nil
}

// parseNow reads formatNow's form.
func parseNow(s string) (time.Time, error) {
	ns, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ns <= 0 || strconv.FormatInt(ns, 10) != s {
		return time.Time{}, fmt.Errorf("time %.24q is not a positive number of nanoseconds", s)
	}
	return time.Unix(0, ns), nil
}

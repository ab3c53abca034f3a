package guestproto

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestSetClockRoundTrip(t *testing.T) {
	for _, now := range []time.Time{time.Unix(0, 1), time.Unix(1796094434, 123456789), time.Unix(0, math.MaxInt64)} {
		cmd, err := EncodeSetClock(SetClock{Now: now})
		if err != nil {
			t.Fatalf("encode %v: %v", now, err)
		}
		if len(cmd) > maxSetClock {
			t.Errorf("%v: %q is over the decoder's limit", now, cmd)
		}
		got, ok, err := DecodeSetClock(cmd)
		if !ok || err != nil || !got.Now.Equal(now) {
			t.Errorf("%v: decode %q = %v, %v, %v", now, cmd, got.Now, ok, err)
		}
	}
}

// Times a guest's clock must never be set to, and malformed requests, are
// refused on both sides; other commands are not set-clock requests.
func TestSetClockRefusals(t *testing.T) {
	for _, now := range []time.Time{{}, time.Unix(0, 0), time.Unix(-5, 0), time.Unix(0, math.MaxInt64).Add(time.Nanosecond)} {
		if cmd, err := EncodeSetClock(SetClock{Now: now}); err == nil {
			t.Errorf("encode %v: %q, no error", now, cmd)
		}
	}
	for _, bad := range []string{SetClockCommand, SetClockCommand + " ", SetClockCommand + " 0", SetClockCommand + " -5",
		SetClockCommand + " +5", SetClockCommand + " 05", SetClockCommand + " 5 6", SetClockCommand + " 5 ",
		SetClockCommand + " 1e9", SetClockCommand + " 9223372036854775808", SetClockCommand + " " + strings.Repeat("1", 40),
		SetClockCommand + " 0x10"} {
		c, ok, err := DecodeSetClock(bad)
		if !ok || err == nil || !c.Now.IsZero() {
			t.Errorf("%q: %v, ok %v, err %v", bad, c.Now, ok, err)
		}
	}
	for _, other := range []string{"", "date", SetClockCommand + "x 5", "ember-setclock5", "/bin/ember-setclock 5"} {
		if _, ok, err := DecodeSetClock(other); ok || err != nil {
			t.Errorf("%q taken as a set-clock request: ok %v, err %v", other, ok, err)
		}
	}
}

// What the decoder accepts is a time the encoder makes, and encodes back
// to the same command.
func FuzzDecodeSetClock(f *testing.F) {
	for _, s := range []string{SetClockCommand + " 1796094434123456789", SetClockCommand + " 1", SetClockCommand + " 0",
		SetClockCommand + " 9223372036854775807", SetClockCommand + " 9223372036854775808", SetClockCommand + " -1",
		SetClockCommand + " 007", SetClockCommand, "echo", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		c, ok, err := DecodeSetClock(cmd)
		if !ok && err != nil {
			t.Fatalf("%q: not a set-clock request, yet an error: %v", cmd, err)
		}
		if !ok || err != nil {
			return
		}
		if len(cmd) > maxSetClock || c.Now.UnixNano() <= 0 {
			t.Fatalf("%q: accepted %v", cmd, c.Now)
		}
		again, err := EncodeSetClock(c)
		if err != nil || again != cmd {
			t.Fatalf("%q -> %v -> %q, %v", cmd, c.Now, again, err)
		}
	})
}

package guestproto

import (
	"testing"
	"time"
)

func TestFreezeRoundTrip(t *testing.T) {
	for _, d := range []time.Duration{time.Second, 1500 * time.Millisecond, time.Minute, MaxFreeze} {
		cmd, err := EncodeFreeze(d)
		if err != nil {
			t.Fatalf("encode %v: %v", d, err)
		}
		got, ok, err := DecodeFreeze(cmd)
		if !ok || err != nil || got < d || got > d+time.Second {
			t.Errorf("%v: decode %q = %v, %v, %v", d, cmd, got, ok, err)
		}
	}
	for _, d := range []time.Duration{0, -1, MaxFreeze + 1} {
		if _, err := EncodeFreeze(d); err == nil {
			t.Errorf("encode %v: no error", d)
		}
	}
}

func FuzzDecodeFreeze(f *testing.F) {
	for _, seed := range []string{FreezeCommand, FreezeCommand + " 30", FreezeCommand + " 0", FreezeCommand + " -5",
		FreezeCommand + " 901", FreezeCommand + " 99999999999999999999", FreezeCommand + " 1e3", "echo", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		d, ok, err := DecodeFreeze(cmd)
		if !ok && err != nil {
			t.Fatalf("%q: not a freeze, yet an error: %v", cmd, err)
		}
		if ok && err == nil && (d < time.Second || d > MaxFreeze) {
			t.Fatalf("%q: limit %v accepted", cmd, d)
		}
	})
}

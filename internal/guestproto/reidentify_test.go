package guestproto

import (
	"strings"
	"testing"
	"time"
)

func TestReidentifyRoundTrip(t *testing.T) {
	now := time.Unix(1764547200, 123456789)
	cmd, err := EncodeReidentify("web-2", now)
	if err != nil {
		t.Fatal(err)
	}
	h, at, ok, err := DecodeReidentify(cmd)
	if err != nil || !ok || h != "web-2" || !at.Equal(now) {
		t.Fatalf("decode %q: %q %v %v %v", cmd, h, at, ok, err)
	}
	if _, _, ok, _ := DecodeReidentify("ls -l"); ok {
		t.Error("another command taken for a reidentify")
	}
	for _, bad := range []string{ReidentifyCommand, ReidentifyCommand + " a", ReidentifyCommand + " -a 5", ReidentifyCommand + " a 0",
		ReidentifyCommand + " a;rm 5", ReidentifyCommand + " a 5 6", ReidentifyCommand + " " + strings.Repeat("a", 64) + " 5", ReidentifyCommand + " a x"} {
		if _, _, ok, err := DecodeReidentify(bad); !ok || err == nil {
			t.Errorf("%q: ok %v err %v", bad, ok, err)
		}
	}
	if _, err := EncodeReidentify("bad name", now); err == nil {
		t.Error("a hostname with a space was encoded")
	}
}

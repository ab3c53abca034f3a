package cli

import (
	"bytes"
	"testing"
)

func TestParseDetachKeys(t *testing.T) {
	for in, want := range map[string][]byte{
		"ctrl-p,ctrl-q": {0x10, 0x11},
		"ctrl-a,d":      {0x01, 'd'},
		"ctrl-[":        {27},
		"Ctrl-@":        {0},
	} {
		got, err := parseDetachKeys(in)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%q: got %v %v, want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "ctrl-", "ctrl-pq", "abc"} {
		if _, err := parseDetachKeys(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestDetacher(t *testing.T) {
	d := &detacher{keys: []byte{0x10, 0x11}}
	// A lone Ctrl-P followed by something else passes through.
	out, hit := d.feed([]byte("a\x10b"))
	if hit || string(out) != "a\x10b" {
		t.Fatalf("got %q %v", out, hit)
	}
	// A partial match across reads is held back, then completes.
	out, hit = d.feed([]byte("c\x10"))
	if hit || string(out) != "c" {
		t.Fatalf("partial: got %q %v", out, hit)
	}
	out, hit = d.feed([]byte("\x11rest"))
	if !hit || len(out) != 0 {
		t.Fatalf("complete: got %q %v", out, hit)
	}
	// Ctrl-P Ctrl-P Ctrl-Q: the first Ctrl-P is typed, then detach.
	d = &detacher{keys: []byte{0x10, 0x11}}
	out, hit = d.feed([]byte("\x10\x10\x11"))
	if !hit || string(out) != "\x10" {
		t.Fatalf("repeat: got %q %v", out, hit)
	}
}

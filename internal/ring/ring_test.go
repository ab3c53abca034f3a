package ring

import (
	"bytes"
	"testing"
)

func TestRingKeepsNewestBytes(t *testing.T) {
	r := New(8)
	r.Write([]byte("abc"))
	if got := string(r.Bytes()); got != "abc" {
		t.Fatalf("got %q", got)
	}
	r.Write([]byte("defgh"))
	if got := string(r.Bytes()); got != "abcdefgh" {
		t.Fatalf("full: got %q", got)
	}
	r.Write([]byte("ij"))
	if got := string(r.Bytes()); got != "cdefghij" {
		t.Fatalf("wrapped: got %q", got)
	}
	r.Write([]byte("0123456789"))
	if got := string(r.Bytes()); got != "23456789" {
		t.Fatalf("oversized write: got %q", got)
	}
	// Many small writes across the wrap point.
	var all bytes.Buffer
	for i := 0; i < 100; i++ {
		b := []byte{byte('a' + i%26), byte('A' + i%26), '.'}
		r.Write(b)
		all.Write(b)
	}
	want := all.Bytes()[all.Len()-8:]
	if got := r.Bytes(); !bytes.Equal(got, want) {
		t.Fatalf("after many writes: got %q want %q", got, want)
	}
}

func TestRingOffsets(t *testing.T) {
	r := New(8)
	if b, off := r.Since(0); len(b) != 0 || off != 0 || r.End() != 0 {
		t.Fatalf("empty: %q %d %d", b, off, r.End())
	}
	r.Write([]byte("abcdef"))
	for _, c := range []struct {
		since int64
		want  string
		off   int64
	}{{0, "abcdef", 0}, {2, "cdef", 2}, {6, "", 6}, {99, "", 6}, {-5, "abcdef", 0}} {
		if b, off := r.Since(c.since); string(b) != c.want || off != c.off {
			t.Fatalf("since %d: got %q at %d, want %q at %d", c.since, b, off, c.want, c.off)
		}
	}
	// Past the wrap: the oldest bytes are gone, and Since says where what
	// it returns begins.
	r.Write([]byte("ghijk"))
	if r.Start() != 3 || r.End() != 11 {
		t.Fatalf("start %d end %d", r.Start(), r.End())
	}
	for _, c := range []struct {
		since int64
		want  string
		off   int64
	}{{0, "defghijk", 3}, {3, "defghijk", 3}, {9, "jk", 9}, {10, "k", 10}, {11, "", 11}} {
		if b, off := r.Since(c.since); string(b) != c.want || off != c.off {
			t.Fatalf("since %d: got %q at %d, want %q at %d", c.since, b, off, c.want, c.off)
		}
	}
	r.Write([]byte("0123456789"))
	if b, off := r.Since(15); string(b) != "456789" || off != 15 || r.Start() != 13 || r.End() != 21 {
		t.Fatalf("after an oversized write: %q at %d, end %d", b, off, r.End())
	}
	// A mirror continues another ring's offsets.
	m := New(4)
	m.Reset(1000)
	m.Write([]byte("xyz"))
	if b, off := m.Since(1001); string(b) != "yz" || off != 1001 || m.End() != 1003 || m.Start() != 1000 {
		t.Fatalf("mirror: %q at %d, start %d end %d", b, off, m.Start(), m.End())
	}
}

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

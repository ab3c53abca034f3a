package guestproto

import (
	"bytes"
	"crypto/ed25519"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func testKeyLine(t testing.TB) string {
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return UserKeyLine(k)
}

// A .pub file's line parses without its comment; options, certificates,
// two keys on a line and junk are refused with the reason.
func TestParseUserKey(t *testing.T) {
	line := testKeyLine(t)
	k, err := ParseUserKey(line + " me@host\n")
	if err != nil || UserKeyLine(k) != line {
		t.Fatalf("parse: %v %v", k, err)
	}
	for in, want := range map[string]string{
		"":                                    "not an SSH public key",
		"hello":                               "not an SSH public key",
		`command="x" ` + line:                 "options",
		line + "\n" + line:                    "more than one key",
		strings.Repeat("a", MaxUserKeyLine+1): "longer than",
	} {
		if _, err := ParseUserKey(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.40q: %v, want %q", in, err, want)
		}
	}
}

// The payload round-trips; more keys than the bound are refused on both sides.
func TestUserKeysPayload(t *testing.T) {
	var lines []string
	for range MaxUserKeys {
		lines = append(lines, testKeyLine(t))
	}
	p, err := EncodeUserKeys(lines)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := DecodeUserKeys(p)
	if err != nil || len(keys) != MaxUserKeys || UserKeyLine(keys[3]) != lines[3] {
		t.Fatalf("round trip: %d keys, %v", len(keys), err)
	}
	if _, err := EncodeUserKeys(append(lines, lines[0])); err == nil {
		t.Error("encoded more than MaxUserKeys")
	}
	if _, err := DecodeUserKeys(append(p, append([]byte("\n"), lines[0]...)...)); err == nil {
		t.Error("decoded more than MaxUserKeys")
	}
	if keys, err := DecodeUserKeys(nil); err != nil || keys != nil {
		t.Errorf("empty payload: %v %v", keys, err)
	}
}

// DecodeUserKeys reads the daemon's bytes in the agent; it must never
// panic nor return more keys than the bound.
func FuzzDecodeUserKeys(f *testing.F) {
	line := testKeyLine(f)
	for _, seed := range []string{line, line + "\n" + line, "", "\n", "ssh-ed25519 AAAA", "ssh-rsa " + strings.Repeat("A", 900), line + " c\n"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := DecodeUserKeys(data)
		if err != nil {
			return
		}
		if len(keys) > MaxUserKeys || len(data) > MaxUserKeysPayload || (len(keys) == 0) != (len(data) == 0) {
			t.Fatalf("accepted %d keys from %d bytes", len(keys), len(data))
		}
		if len(data) > 0 && bytes.Count(data, []byte("\n"))+1 != len(keys) {
			t.Fatalf("%d keys from %d lines", len(keys), bytes.Count(data, []byte("\n"))+1)
		}
	})
}

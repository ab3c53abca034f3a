package agent

import (
	"bytes"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// Init's host key goes to every server it starts through readHostKey:
// the same key each time, and nothing but a key is accepted.
func TestHostKeyHandOver(t *testing.T) {
	pemKey, err := newHostKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	a, err := readHostKey(bytes.NewReader(pemKey))
	if err != nil {
		t.Fatal(err)
	}
	b, err := readHostKey(bytes.NewReader(pemKey))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.PublicKey().Marshal(), b.PublicKey().Marshal()) || a.PublicKey().Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("keys differ or are not ed25519: %s %s", a.PublicKey().Type(), b.PublicKey().Type())
	}
	for name, in := range map[string]string{
		"empty":    "",
		"garbage":  "not a key",
		"too long": strings.Repeat("x", maxHostKeyPEM+1),
	} {
		if _, err := readHostKey(strings.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	srv, err := NewServer(ServerConfig{AuthorizedKey: a.PublicKey(), HostKey: a})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(srv.HostKey().Marshal(), a.PublicKey().Marshal()) {
		t.Fatal("the server does not hold the key it was given")
	}
}

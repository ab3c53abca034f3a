//go:build linux

package agent

import (
	"bytes"
	"strings"
	"sync/atomic"
	"testing"
)

// Init keeps the last valid key a server sends back, whatever else
// comes on the pipe and however the writes are split.
func TestTakeNewKeys(t *testing.T) {
	boot, _ := newHostKeyPEM()
	a, _ := newHostKeyPEM()
	b, _ := newHostKeyPEM()
	var hk atomic.Pointer[[]byte]
	hk.Store(&boot)
	junk := "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n"
	in := string(a) + junk + strings.Repeat("x", 100) + "\n" + string(b)
	takeNewKeys(strings.NewReader(in), &hk)
	if !bytes.Equal(*hk.Load(), b) {
		t.Fatalf("kept %q, want the last valid key", *hk.Load())
	}
	hk.Store(&boot)
	takeNewKeys(strings.NewReader(strings.Repeat("y", 3*maxHostKeyPEM)), &hk)
	if !bytes.Equal(*hk.Load(), boot) {
		t.Fatal("garbage replaced the key")
	}
}

package agent

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"net"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guestproto"
)

func testKeyArg(t *testing.T) (ssh.PublicKey, string) {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k, base64.RawURLEncoding.EncodeToString(k.Marshal())
}

func TestParseCmdline(t *testing.T) {
	key, arg := testKeyArg(t)
	cfg, err := ParseCmdline("console=ttyS0 panic=-1 quiet ember.root=/dev/vda ember.hostname=t1 ember.key=" + arg +
		" ember.ip=10.0.2.15/24 ember.gw=10.0.2.2 ember.dns=10.0.2.3,10.0.2.4 ember.port=2222 ember.future=x\n")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Root != "/dev/vda" || cfg.Hostname != "t1" || cfg.Port != 2222 {
		t.Errorf("got %+v", cfg)
	}
	if !bytes.Equal(cfg.Key.Marshal(), key.Marshal()) {
		t.Error("key differs")
	}
	if cfg.IP.String() != "10.0.2.15/24" || !cfg.Gateway.Equal(net.ParseIP("10.0.2.2")) {
		t.Errorf("ip %v gw %v", cfg.IP, cfg.Gateway)
	}
	if len(cfg.DNS) != 2 || !cfg.DNS[1].Equal(net.ParseIP("10.0.2.4")) {
		t.Errorf("dns %v", cfg.DNS)
	}
}

func TestParseCmdlineDefaults(t *testing.T) {
	cfg, err := ParseCmdline("console=ttyS0")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Port != guestproto.DefaultPort || cfg.IP != nil || cfg.Key != nil {
		t.Errorf("got %+v", cfg)
	}
}

func TestParseCmdlineErrors(t *testing.T) {
	for _, tc := range []struct{ arg, want string }{
		{"ember.key=!!!", "kernel argument ember.key: decode key"},
		{"ember.key=AAAA", "kernel argument ember.key: parse key"},
		{"ember.ip=10.0.2.15", "kernel argument ember.ip"},
		{"ember.gw=nope", `kernel argument ember.gw: bad address "nope"`},
		{"ember.dns=10.0.2.3,x", `kernel argument ember.dns: bad address "x"`},
		{"ember.port=70000", "kernel argument ember.port: out of range"},
	} {
		_, err := ParseCmdline(tc.arg)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want prefix %q", tc.arg, err, tc.want)
		}
	}
}

func TestParseCmdlineProbe(t *testing.T) {
	cfg, err := ParseCmdline("console=ttyS0 ember.probe=1")
	if err != nil || !cfg.Probe {
		t.Fatalf("probe not set: %+v %v", cfg, err)
	}
	if cfg, _ := ParseCmdline("ember.probe=0"); cfg.Probe {
		t.Error("ember.probe=0 set probe")
	}
}

// ember.share arguments (the mount capability) come back as the daemon
// wrote them, in order; a malformed one fails the boot's parse.
func TestParseCmdlineShares(t *testing.T) {
	_, arg := testKeyArg(t)
	a := guestproto.Share{Transport: guestproto.ShareVirtioFS, Tag: "ember0", Dir: "/mnt/my host", ReadOnly: true}
	b := guestproto.Share{Transport: guestproto.Share9P, Tag: "ember1", Dir: "/work"}
	cfg, err := ParseCmdline("ember.key=" + arg + " ember.share=" + guestproto.ShareArg(a) + " ember.share=" + guestproto.ShareArg(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Shares) != 2 || cfg.Shares[0] != a || cfg.Shares[1] != b {
		t.Fatalf("shares %+v", cfg.Shares)
	}
	for _, bad := range []string{"nfs,t,rw,L3c", "virtiofs,t,rx,L3c", "virtiofs,t,rw", "virtiofs,t,rw,Lw"} {
		if _, err := ParseCmdline("ember.share=" + bad); err == nil || !strings.Contains(err.Error(), guestproto.ArgShare) {
			t.Errorf("%q: err %v", bad, err)
		}
	}
}

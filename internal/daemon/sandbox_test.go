package daemon

import (
	"errors"
	"os/user"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/cgroup"
	"github.com/emberhq/ember/internal/hypervisor/qemu"
	"github.com/emberhq/ember/internal/loopguard"
)

// A passwd of three users, for lookupQEMUUser.
var testPasswd = map[string]*user.User{
	"ember-qemu": {Username: "ember-qemu", Uid: "998", Gid: "997"},
	"nobody":     {Username: "nobody", Uid: "65534", Gid: "65534"},
	"wheel":      {Username: "wheel", Uid: "1000", Gid: "0"},
}

func byName(n string) (*user.User, error) {
	if u, ok := testPasswd[n]; ok {
		return u, nil
	}
	return nil, user.UnknownUserError(n)
}

func byID(id string) (*user.User, error) {
	for _, u := range testPasswd {
		if u.Uid == id {
			return u, nil
		}
	}
	return nil, user.UnknownUserIdError(0)
}

func TestLookupQEMUUser(t *testing.T) {
	for _, c := range []struct {
		name     string
		passwd   func(string) (*user.User, error)
		want     qemu.User
		fallback bool
		err      string
	}{
		{name: "ember-qemu", passwd: byName, want: qemu.User{Name: "ember-qemu", UID: 998, GID: 997}},
		{name: "65534", passwd: byName, want: qemu.User{Name: "nobody", UID: 65534, GID: 65534}},
		{name: "4000", passwd: byName, want: qemu.User{Name: "uid 4000", UID: 4000, GID: 4000}},
		// The default, not created yet: nobody, with a warning saying how.
		{name: "ember-qemu", passwd: func(n string) (*user.User, error) {
			if n == "ember-qemu" {
				return nil, user.UnknownUserError(n)
			}
			return byName(n)
		}, want: qemu.User{Name: "nobody", UID: 65534, GID: 65534}, fallback: true},
		// A user the config names must exist.
		{name: "qemu-typo", passwd: byName, err: "`qemu_user` qemu-typo: user: unknown user qemu-typo; create it with `useradd --system --no-create-home --shell /usr/sbin/nologin qemu-typo` or name another user"},
		{name: "wheel", passwd: byName, err: "`qemu_user` wheel has uid 1000 and gid 0: QEMU must run as a user that is not root and not in group root"},
	} {
		u, err := lookupQEMUUser(c.name, c.passwd, byID)
		if c.err != "" {
			if err == nil || err.Error() != c.err {
				t.Errorf("%s: err = %v\nwant %s", c.name, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if u.User != c.want || (u.fallback != "") != c.fallback {
			t.Errorf("%s: got %+v (fallback %q), want %+v (fallback %v)", c.name, u.User, u.fallback, c.want, c.fallback)
		}
		if c.fallback && !strings.Contains(u.fallback, "useradd --system") {
			t.Errorf("%s: fallback warning %q does not say how to create the user", c.name, u.fallback)
		}
	}
}

// loadLoopGuard says why there is no filter: no cgroups, no v2 folder, or
// the kernel's refusal; it loads only where a v2 folder exists.
func TestLoadLoopGuard(t *testing.T) {
	load := func() (*loopguard.Guard, error) { return nil, errors.New("load: operation not permitted") }
	if g, why := loadLoopGuard(nil, load); g != nil || !strings.Contains(why, "no cgroup") {
		t.Errorf("no cgroups: %v %q", g, why)
	}
	v1 := cgroup.NewV1("/sys/fs/cgroup/memory/ember", "")
	if g, why := loadLoopGuard(v1, func() (*loopguard.Guard, error) { t.Error("loaded without a v2 folder"); return nil, nil }); g != nil || !strings.Contains(why, "cgroup v2") {
		t.Errorf("v1 only: %v %q", g, why)
	}
	hybrid := cgroup.NewV1("/sys/fs/cgroup/memory/ember", "").WithV2("/sys/fs/cgroup/unified/ember.slice")
	if g, why := loadLoopGuard(hybrid, load); g != nil || why != "load: operation not permitted" {
		t.Errorf("refused by the kernel: %v %q", g, why)
	}
}

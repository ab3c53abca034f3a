package cli

import (
	"strings"
	"testing"
)

func TestCpArg(t *testing.T) {
	for _, c := range []struct {
		arg, vm, path string
		isVM          bool
	}{
		{"vm1:/work", "vm1", "/work", true},
		{"vm1:/", "vm1", "/", true},
		{"./a:b", "", "./a:b", false},
		{"dir/x:y", "", "dir/x:y", false},
		{"-", "", "-", false},
		{"/abs", "", "/abs", false},
	} {
		vm, p, isVM, err := cpArg(c.arg)
		if err != nil || vm != c.vm || p != c.path || isVM != c.isVM {
			t.Errorf("cpArg(%q) = %q %q %v %v", c.arg, vm, p, isVM, err)
		}
	}
	for _, arg := range []string{"", ":/x", "vm1:relative", "vm1:"} {
		if _, _, _, err := cpArg(arg); err == nil {
			t.Errorf("cpArg(%q): no error", arg)
		}
	}
}

func TestCpUsageErrors(t *testing.T) {
	home := noDaemon(t)
	for args, want := range map[string]string{
		"cp a b":           "neither SRC nor DST is in a VM",
		"cp v1:/a v2:/b":   "both SRC and DST are in VMs",
		"cp a v1:relative": "must be absolute",
	} {
		_, errOut, code := cli(home, strings.Fields(args)...)
		if code != 2 || !strings.Contains(errOut, want) {
			t.Errorf("ember %s: exit %d, stderr %q; want 2 and %q", args, code, errOut, want)
		}
	}
}

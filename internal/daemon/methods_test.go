package daemon

import (
	"sort"
	"testing"

	"github.com/emberhq/ember/internal/wire"
)

// The dispatch table and wire's method table agree: every method has one
// handler, and no handler answers a method the table lacks.
func TestMethodTableComplete(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	want := map[string]bool{}
	for _, m := range wire.Methods {
		if want[m.Name] {
			t.Errorf("wire.Methods lists %s twice", m.Name)
		}
		want[m.Name] = true
		if td.methods[m.Name] == nil {
			t.Errorf("no handler for %s", m.Name)
		}
	}
	var extra []string
	for name := range td.methods {
		if !want[name] {
			extra = append(extra, name)
		}
	}
	sort.Strings(extra)
	if len(extra) > 0 {
		t.Errorf("handlers for methods not in wire.Methods: %v", extra)
	}
}

package webui

import (
	"io/fs"
	"regexp"
	"strings"
	"testing"
)

// The dashboard loads nothing from the internet: no file of ember's own
// names another host (the vendored ones, built by make, are npm's).
func TestPageLoadsNothingFromElsewhere(t *testing.T) {
	external := regexp.MustCompile(`(?i)(src|href|url|action)\s*[=(]\s*["']?(https?:)?//`)
	err := fs.WalkDir(Files(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(path, "vendor/") {
			return err
		}
		b, err := fs.ReadFile(Files(), path)
		if err != nil {
			return err
		}
		if m := external.Find(b); m != nil {
			t.Errorf("%s loads from another host: %s", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"index.html", "app.js", "app.css"} {
		if _, err := fs.Stat(Files(), name); err != nil {
			t.Errorf("%s is not embedded: %v", name, err)
		}
	}
}

// index.html loads the vendored files by the names Missing checks.
func TestVendoredNamesMatchThePage(t *testing.T) {
	b, err := fs.ReadFile(Files(), "index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Vendored {
		if !strings.Contains(string(b), `"/`+name+`"`) {
			t.Errorf("index.html does not load %s", name)
		}
	}
}

// Package webui holds the web dashboard's files, embedded in the binary:
// ember's own page, script and style (static/), and the terminal
// (xterm.js and its fit add-on) that `make build` copies from npm into
// static/vendor/ (package.json and package-lock.json here pin them;
// nothing from npm is committed). The page loads nothing from anywhere
// but the daemon.
package webui

import (
	"embed"
	"io/fs"
)

//go:embed static
var files embed.FS

// Vendored are the files `make build` copies from npm (see the Makefile's
// webui target): without them the dashboard cannot run its terminal.
var Vendored = []string{"vendor/xterm.js", "vendor/xterm.css", "vendor/addon-fit.js"}

// Files is the dashboard's files, rooted at static/.
func Files() fs.FS {
	sub, err := fs.Sub(files, "static")
	if err != nil {
		panic(err) // static/ is embedded: it always exists
	}
	return sub
}

// Missing lists the vendored files this binary was built without.
func Missing() []string {
	var out []string
	for _, name := range Vendored {
		if _, err := fs.Stat(Files(), name); err != nil {
			out = append(out, name)
		}
	}
	return out
}

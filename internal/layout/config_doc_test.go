package layout

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// README.md says where the config file is in each layout and shows every
// key the daemon reads, each on a line of its own with its default (a
// key the file refuses as unknown must not be one the README offers,
// and a key the README leaves out is one nobody finds).
func TestREADMEShowsEveryConfigKey(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	lines := map[string]bool{}
	for _, line := range strings.Split(readme, "\n") {
		line = strings.TrimPrefix(strings.TrimSpace(line), "# ")
		if k, _, ok := strings.Cut(line, " = "); ok {
			lines[strings.TrimSpace(k)] = true
		}
	}
	typ := reflect.TypeOf(Config{})
	for i := 0; i < typ.NumField(); i++ {
		key := typ.Field(i).Tag.Get("toml")
		if key != "" && !lines[key] {
			t.Errorf("README.md has no `%s = ...` line for the config key %s", key, typ.Field(i).Name)
		}
	}
	for _, where := range []string{"`/etc/ember/config.toml`", "`$XDG_CONFIG_HOME/ember/config.toml`", "`DIR/" + ConfigFile + "`"} {
		if !strings.Contains(readme, where) {
			t.Errorf("README.md does not name the config file %s", where)
		}
	}
}

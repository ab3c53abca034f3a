package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/emberhq/ember/internal/wire"
)

// webEnv starts a daemon whose dashboard listens on a free loopback port
// and returns the URL `ember web` prints.
func webEnv(t *testing.T) (*env, *url.URL) {
	t.Helper()
	e := newEnvWith(t, e2eConfig+"web_port = 0\n", nil)
	u, err := url.Parse(strings.TrimSpace(e.must("web")))
	if err != nil || u.Hostname() != "127.0.0.1" || u.Query().Get("token") == "" {
		t.Fatalf("ember web printed %v (%v)", u, err)
	}
	return e, u
}

// TestWebDashboardInBrowser drives the dashboard in Debian's chromium
// with npm's playwright-core (test/browser/dashboard.mjs, installed by
// make's browserdeps): a VM created from the CLI appears live, a browser
// terminal and the CLI share one session (read, send, reload with
// history, close detaches), stop from the page, and nothing without the
// token. Screenshots go to test/browser/out/ (git-ignored).
func TestWebDashboardInBrowser(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	browserDir := filepath.Join(root, "test", "browser")
	if _, err := os.Stat(filepath.Join(browserDir, "node_modules", "playwright-core")); err != nil {
		t.Fatalf("npm's playwright-core is not installed: run `make browserdeps` (make e2e does): %v", err)
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed: `make deps-test` installs it: %v", err)
	}
	e, u := webEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "dashboard.mjs")
	cmd.Dir = browserDir
	cmd.Env = append(os.Environ(), "EMBER_URL="+u.String(), "EMBER_BIN="+filepath.Join(binDir, "ember"),
		"EMBER_HOME="+e.home, "SHOTS="+filepath.Join(browserDir, "out"), "CHROMIUM="+chromium)
	out, err := cmd.CombinedOutput()
	t.Logf("dashboard.mjs:\n%s", out)
	if err != nil {
		t.Fatalf("the browser test failed: %v", err)
	}
	for _, want := range []string{"appeared without a reload", "ember session read shows it", "re-attached with the history",
		"ember ls shows it stopped", "without the token"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the browser test never got to %q", want)
		}
	}
}

// TestWebRefusesStrangers checks the real daemon's web listener without a
// browser: 401 everywhere without the token, and a websocket with the
// token but from another origin refused.
func TestWebRefusesStrangers(t *testing.T) {
	_, u := webEnv(t)
	token := u.Query().Get("token")
	base := "http://" + u.Host
	for _, path := range []string{"/", "/terminal?vm=x", "/metrics", "/api/ws"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without the token: %d", path, resp.StatusCode)
		}
	}
	resp, err := http.Post(base+"/api/"+wire.VMList.Name, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST /api/vm.list without the token: %d", resp.StatusCode)
	}
	cookie := wire.WebTokenCookie + "=" + token
	_, hr, err := websocket.Dial(context.Background(), "ws://"+u.Host+"/api/ws", &websocket.DialOptions{
		HTTPHeader: http.Header{"Cookie": {cookie}, "Origin": {"http://evil.example"}}})
	if err == nil || hr == nil || hr.StatusCode != http.StatusForbidden {
		t.Errorf("a websocket from another origin: %v %v", hr, err)
	}
	// The same websocket from the page's own origin works: daemon.info.
	ws, _, err := websocket.Dial(context.Background(), "ws://"+u.Host+"/api/ws", &websocket.DialOptions{
		HTTPHeader: http.Header{"Cookie": {cookie}, "Origin": {base}}})
	if err != nil {
		t.Fatalf("a websocket from the dashboard's origin: %v", err)
	}
	defer ws.CloseNow()
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	line, _ := json.Marshal(wire.Request{Method: wire.DaemonInfoMethod.Name})
	if _, err := nc.Write(append(line, '\n')); err != nil {
		t.Fatal(err)
	}
	l, err := bufio.NewReader(nc).ReadBytes('\n')
	var r struct {
		Result wire.DaemonInfo `json:"result"`
	}
	if err != nil || json.Unmarshal(l, &r) != nil || r.Result.PID == 0 {
		t.Fatalf("daemon.info over the websocket: %s %v", l, err)
	}
	// /metrics with the token as a scraper sends it.
	req, _ := http.NewRequest("GET", base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	mr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer mr.Body.Close()
	sc := bufio.NewScanner(mr.Body)
	found := false
	for sc.Scan() {
		found = found || strings.HasPrefix(sc.Text(), "process_resident_memory_bytes ")
	}
	if mr.StatusCode != 200 || !found {
		t.Fatalf("/metrics: %d, process_resident_memory_bytes %v", mr.StatusCode, found)
	}
}

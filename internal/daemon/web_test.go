package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// webFor asks the daemon for its dashboard address (daemon.web) and
// returns the address without the token, and the token.
func webFor(t *testing.T, c *client.Client) (string, string) {
	t.Helper()
	info, err := client.Do(context.Background(), c, wire.DaemonWeb, wire.None{})
	if err != nil || info.URL == "" {
		t.Fatalf("daemon.web: %+v %v", info, err)
	}
	u, err := url.Parse(info.URL)
	if err != nil {
		t.Fatal(err)
	}
	token := u.Query().Get("token")
	u.RawQuery = ""
	return u.String(), token
}

// noRedirects is a client that shows redirects instead of following them.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func webDo(t *testing.T, method, u, token, body string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.AddCookie(&http.Cookie{Name: wire.WebTokenCookie, Value: token})
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if h := hdr["Host"]; h != "" {
		req.Host = h
	}
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestWebRefusesWithoutToken(t *testing.T) {
	td, c, _ := daemonWithVM(t, "vm1")
	base, token := webFor(t, c)
	fi, err := os.Stat(td.layout.WebToken())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	wrong := strings.Repeat("A", len(token))
	for _, tok := range []string{"", wrong} {
		for _, tc := range []struct{ method, path string }{
			{"GET", ""}, {"GET", "vms"}, {"GET", "app.js"}, {"POST", "api/vm.list"}, {"GET", "api/ws"}, {"GET", "metrics"},
		} {
			resp, body := webDo(t, tc.method, base+tc.path, tok, "{}", nil)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s /%s with token %q: %d, want 401", tc.method, tc.path, tok, resp.StatusCode)
			}
			if strings.Contains(body, "vm1") {
				t.Errorf("%s /%s without the token shows a VM: %s", tc.method, tc.path, body)
			}
			if tc.path == "" && !strings.Contains(body, `name="token"`) {
				t.Errorf("the page without a token is not the login page: %s", body)
			}
			if resp.Header.Get("Access-Control-Allow-Origin") != "" {
				t.Errorf("CORS header sent: %v", resp.Header)
			}
		}
		// A websocket without the token is refused before any upgrade.
		_, resp, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(base, "http")+"api/ws",
			&websocket.DialOptions{HTTPHeader: http.Header{"Cookie": {wire.WebTokenCookie + "=" + tok}}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("websocket with token %q: %v %v, want 401", tok, resp, err)
		}
	}
	// A name that only resolves to loopback (DNS rebinding) is refused
	// even with the token.
	resp, _ := webDo(t, "POST", base+"api/vm.list", token, "", map[string]string{"Host": "evil.example:80"})
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("foreign Host: %d", resp.StatusCode)
	}
}

func TestWebTokenBecomesCookie(t *testing.T) {
	_, c, _ := daemonWithVM(t, "vm1")
	base, token := webFor(t, c)
	resp, _ := webDo(t, "GET", base+"vms?token="+url.QueryEscape(token)+"&x=1", "", "", nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/vms?x=1" {
		t.Fatalf("first visit: %d to %q, want 303 to /vms?x=1", resp.StatusCode, resp.Header.Get("Location"))
	}
	var got *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == wire.WebTokenCookie {
			got = ck
		}
	}
	if got == nil || got.Value != token || !got.HttpOnly || got.SameSite != http.SameSiteStrictMode || got.Path != "/" {
		t.Fatalf("cookie: %+v", got)
	}
	// The redirect stays on this host, whatever the path.
	resp, _ = webDo(t, "GET", base+"/evil.example/x?token="+url.QueryEscape(token), "", "", nil)
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/evil.example/x" {
		t.Fatalf("a path with two slashes: %d to %q", resp.StatusCode, loc)
	}
	// A wrong token in the address sets nothing.
	resp, _ = webDo(t, "GET", base+"?token=nope", "", "", nil)
	if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
		t.Fatalf("wrong token: %d %v", resp.StatusCode, resp.Cookies())
	}
}

func TestWebAPIUsesTheSocketsDispatch(t *testing.T) {
	_, c, vm := daemonWithVM(t, "vm1")
	base, token := webFor(t, c)
	resp, body := webDo(t, "POST", base+"api/vm.list", token, "", nil)
	var r struct {
		Result []wire.VM   `json:"result"`
		Error  *wire.Error `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil || resp.StatusCode != 200 || len(r.Result) != 1 || r.Result[0].ID != vm.ID {
		t.Fatalf("vm.list: %d %s %v", resp.StatusCode, body, err)
	}
	if r.Result[0].StartedAt == nil {
		t.Fatalf("a running VM's list entry has no started_at: %s", body)
	}
	// Bearer works as the cookie does (curl, Prometheus).
	resp, _ = webDo(t, "POST", base+"api/vm.inspect", "", `{"ref":"vm1"}`, map[string]string{"Authorization": "Bearer " + token})
	if resp.StatusCode != 200 {
		t.Fatalf("bearer: %d", resp.StatusCode)
	}
	for _, tc := range []struct {
		path, body string
		hdr        map[string]string
		status     int
		code       string
	}{
		{"api/vm.inspect", `{"ref":"nope"}`, nil, 404, wire.CodeNotFound},
		{"api/vm.inspect", `{"ref":`, nil, 400, wire.CodeInvalid},
		{"api/no.such", `{}`, nil, 400, wire.CodeInvalid},
		{"api/vm.exec", `{"ref":"vm1","argv":["true"]}`, nil, 400, wire.CodeInvalid},
		{"api/session.send", `{"ref":"vm1","name":"x","text":"` + strings.Repeat("a", maxRequestLine) + `"}`, nil, 413, wire.CodeInvalid},
		{"api/vm.list", ``, map[string]string{"Content-Type": "text/plain"}, 415, wire.CodeInvalid},
		{"api/vm.list", ``, map[string]string{"Origin": "http://evil.example"}, 403, wire.CodeInvalid},
	} {
		resp, body := webDo(t, "POST", base+tc.path, token, tc.body, tc.hdr)
		var r wire.Response
		_ = json.Unmarshal([]byte(body), &r)
		if resp.StatusCode != tc.status || r.Error == nil || r.Error.Code != tc.code {
			t.Errorf("%s: %d %.200s, want %d %s", tc.path, resp.StatusCode, body, tc.status, tc.code)
		}
	}
	// Stop through the web: the socket sees it.
	resp, body = webDo(t, "POST", base+"api/vm.stop", token, `{"ref":"vm1"}`, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("stop: %d %s", resp.StatusCode, body)
	}
	got, err := client.Do(context.Background(), c, wire.VMInspect, wire.RefParams{Ref: "vm1"})
	if err != nil || got.State != wire.StateStopped {
		t.Fatalf("after a web stop: %+v %v", got, err)
	}
}

// wsOpen opens a stream on the websocket as a socket client would: the
// request line, the response line, then frames.
func wsOpen(t *testing.T, base, token, origin string, method string, params any) (*websocket.Conn, *bufio.Reader, wire.Response) {
	t.Helper()
	hdr := http.Header{"Cookie": {wire.WebTokenCookie + "=" + token}}
	if origin != "" {
		hdr.Set("Origin", origin)
	}
	ws, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(base, "http")+"api/ws", &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	p, _ := json.Marshal(params)
	line, _ := json.Marshal(wire.Request{Method: method, Params: p})
	if _, err := nc.Write(append(line, '\n')); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	l, err := br.ReadBytes('\n')
	if err != nil {
		t.Fatalf("response: %v", err)
	}
	var resp wire.Response
	if err := json.Unmarshal(l, &resp); err != nil {
		t.Fatal(err)
	}
	return ws, br, resp
}

func TestWebSocketStreams(t *testing.T) {
	_, c, _ := daemonWithVM(t, "vm1")
	base, token := webFor(t, c)
	// The page's own origin (what a browser sends) may open a stream.
	_, br, resp := wsOpen(t, base, token, strings.TrimSuffix(base, "/"), wire.VMExec.Name, wire.ExecParams{Ref: "vm1", Argv: []string{"echo", "hi"}})
	if !resp.Stream {
		t.Fatalf("exec over the websocket: %+v", resp)
	}
	var out bytes.Buffer
	for {
		kind, p, err := wire.ReadFrame(br)
		if err != nil {
			t.Fatalf("frame: %v (so far %q)", err, out.String())
		}
		if kind == wire.FrameStdout {
			out.Write(p)
		}
		if kind == wire.FrameExit {
			break
		}
	}
	if out.String() != "ran: echo hi\n" {
		t.Fatalf("exec output %q", out.String())
	}
	// Unary methods work on it too, answered and closed as on the socket.
	_, _, resp = wsOpen(t, base, token, "", wire.VMInspect.Name, wire.RefParams{Ref: "vm1"})
	var vm wire.VM
	if resp.Error != nil || json.Unmarshal(resp.Result, &vm) != nil || vm.Name != "vm1" {
		t.Fatalf("inspect over the websocket: %+v", resp)
	}
	// Descriptors pass only on the unix socket.
	_, br, resp = wsOpen(t, base, token, "", wire.ImageRegister.Name, wire.ImageRegisterParams{Name: "x"})
	if resp.Error == nil {
		kind, p, _ := wire.ReadFrame(br)
		if kind != wire.FrameExit || !strings.Contains(string(p), "only the unix socket") {
			t.Fatalf("image.register over the websocket: %+v %c %s", resp, kind, p)
		}
	}
	// Another origin is refused at the upgrade.
	hdr := http.Header{"Cookie": {wire.WebTokenCookie + "=" + token}, "Origin": {"http://evil.example"}}
	_, hr, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(base, "http")+"api/ws", &websocket.DialOptions{HTTPHeader: hdr})
	if err == nil || hr == nil || hr.StatusCode != http.StatusForbidden {
		t.Fatalf("websocket from another origin: %v %v", hr, err)
	}
}

func TestWebMetrics(t *testing.T) {
	_, c, _ := daemonWithVM(t, "vm1")
	base, token := webFor(t, c)
	wants := []string{
		`ember_vms{state="running"} 1`,
		`ember_vms{state="stopped"} 0`,
		`ember_vm_create_duration_seconds_count 1`,
		`ember_vm_boot_duration_seconds_count 1`,
		`ember_operations_total{kind="vm.create",state="succeeded"} 1`,
		"ember_sessions 0",
		"ember_session_clients 0",
		"ember_dns_queries_total 0",
		"process_resident_memory_bytes ",
		"go_goroutines ",
	}
	// The create's outcome is counted as its operation is stored, just
	// after its waiters hear it finished.
	var missing []string
	var body string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var resp *http.Response
		resp, body = webDo(t, "GET", base+"metrics", token, "", nil)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
			t.Fatalf("metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		missing = missing[:0]
		for _, want := range wants {
			if !strings.Contains(body, want) {
				missing = append(missing, want)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(missing) > 0 {
		t.Fatalf("metrics lack %q:\n%s", missing, body)
	}
}

func TestWebTokenKeptAcrossRestart(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c, stop := serveStoppable(t, td)
	_, token := webFor(t, c)
	stop()
	td.Close()
	td2 := openTestDaemon(t, td.home, td.drv)
	_, token2 := webFor(t, serve(t, td2))
	if token2 != token {
		t.Fatalf("token changed across a restart")
	}
	// A token file someone else could read is replaced.
	if err := os.Chmod(td.layout.WebToken(), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := loadOrCreateToken(td.layout.WebToken())
	if err != nil || got == token {
		t.Fatalf("a 0644 token file was kept: %v", err)
	}
	if fi, _ := os.Stat(td.layout.WebToken()); fi.Mode().Perm() != 0o600 {
		t.Fatalf("new token file mode %v", fi.Mode())
	}
}

// Without its web listener (off in the config, or its port taken) the
// daemon runs on, and daemon.web says why.
func TestWebOffOrPortTaken(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	off := &Daemon{layout: td.layout, cfg: td.cfg, log: td.log, metrics: newDaemonMetrics()}
	off.cfg.Web = false
	off.startWeb(context.Background())
	if info := off.webInfo(); info.URL != "" || !strings.Contains(info.Reason, "web = false") {
		t.Fatalf("web off: %+v", info)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := &Daemon{layout: td.layout, cfg: td.cfg, log: td.log, metrics: newDaemonMetrics(), webAddr: l.Addr().String()}
	taken.startWeb(context.Background())
	if info := taken.webInfo(); info.URL != "" || !strings.Contains(info.Reason, "web_port") {
		t.Fatalf("port taken: %+v", info)
	}
	taken.closeWeb()
}

// A browser terminal and a socket client attach to one session at once
// through the same controller: both see its output, the browser's typing
// reaches it, and a websocket that closes (a tab closed) detaches only.
func TestWebTerminalSharesTheSession(t *testing.T) {
	td, c, vm := daemonWithVM(t, "vm1")
	ch := newFakeSessionChannel()
	plantSessions(t, td, vm.ID, time.Second, map[string]*fakeSessionChannel{"main": ch})
	base, token := webFor(t, c)
	ws, br, resp := wsOpen(t, base, token, strings.TrimSuffix(base, "/"), wire.SessionAttach.Name,
		wire.SessionAttachParams{Ref: "vm1", Name: "main", Rows: 30, Cols: 100})
	if !resp.Stream {
		t.Fatalf("attach over the websocket: %+v", resp)
	}
	cli, err := client.Open(context.Background(), c, wire.SessionAttach, wire.SessionAttachParams{Ref: "vm1", Name: "main"})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	fromCLI := collect(cli)
	ctl := td.sessions.registry.get(sessionKey{vm.ID, "main"})
	eventually(t, "two clients attached", func() bool { return ctl.clientCount() == 2 })
	ch.w.Write([]byte("prompt$ "))
	var web bytes.Buffer
	for !strings.Contains(web.String(), "prompt$ ") {
		kind, p, err := wire.ReadFrame(br)
		if err != nil {
			t.Fatalf("browser side: %v (so far %q)", err, web.String())
		}
		if kind == wire.FrameStdout {
			web.Write(p)
		}
	}
	eventually(t, "the CLI sees the same output", func() bool { return strings.Contains(fromCLI.String(), "prompt$ ") })
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	if err := wire.WriteFrame(nc, wire.FrameStdin, []byte("echo hi\r")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the browser's typing reaches the session", func() bool {
		ch.mu.Lock()
		defer ch.mu.Unlock()
		return strings.Contains(ch.in.String(), "echo hi\r")
	})
	// The browser's terminal resizes (xterm's fit): the session follows.
	if err := wire.WriteJSONFrame(nc, wire.FrameResize, wire.Resize{Rows: 41, Cols: 132}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the session takes the browser's size", func() bool {
		rs := ch.resizesSeen()
		return len(rs) > 0 && rs[len(rs)-1] == [2]int{41, 132}
	})
	// /metrics counts the session and its two clients.
	_, metrics := webDo(t, "GET", base+"metrics", token, "", nil)
	if !strings.Contains(metrics, "ember_sessions 1\n") || !strings.Contains(metrics, "ember_session_clients 2\n") {
		t.Fatalf("metrics with one session and two clients:\n%s", metrics)
	}
	// The tab closes: its client goes, the session and the CLI stay.
	ws.Close(websocket.StatusGoingAway, "")
	eventually(t, "the browser detached", func() bool { return ctl.clientCount() == 1 })
	if got := td.sessions.registry.get(sessionKey{vm.ID, "main"}); got != ctl {
		t.Fatal("closing the websocket ended the session's controller")
	}
	select {
	case <-ch.closed:
		t.Fatal("closing the websocket closed the session's channel")
	default:
	}
}

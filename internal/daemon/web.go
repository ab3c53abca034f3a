package daemon

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/net/netutil"

	"github.com/emberhq/ember/internal/webui"
	"github.com/emberhq/ember/internal/wire"
)

// The web listener: the dashboard's pages, the method table over HTTP
// (POST /api/METHOD, unary methods) and websockets (GET /api/ws, every
// method, streams included, through the socket's own serveConn), and
// /metrics. Loopback only, and nothing but the login page without the
// token: a browser brings it once in the address (?token=), gets it back
// as an HttpOnly SameSite=Strict cookie and is sent to the same address
// without it; other clients send `Authorization: Bearer TOKEN`. No CORS
// headers are ever sent, websocket upgrades must come from the page's own
// origin, and a POST must be JSON (a cross-site form cannot send it).

const (
	// webTokenBytes is the token's entropy.
	webTokenBytes = 32
	// webHeaderTimeout bounds reading a request's headers; a websocket
	// then has requestTimeout for its request line, as on the socket.
	webHeaderTimeout = 10 * time.Second
	webMaxHeader     = 64 << 10
	// webIdleTimeout closes a kept-alive connection that sends nothing.
	webIdleTimeout = 2 * time.Minute
)

// webServer is the daemon's web listener. The fields before mu are set
// before it serves and never change; the stream slots (connLimiter) own
// their lock.
type webServer struct {
	d       *Daemon
	token   string
	url     string // the dashboard's address, without the token
	srv     *http.Server
	streams *connLimiter
	assets  fs.FS
	metrics http.Handler

	// mu guards closed; handlers counts the requests in flight, which
	// closeWeb waits for (a hijacked websocket outlives the server).
	mu       sync.Mutex
	closed   bool
	handlers sync.WaitGroup
}

// enter counts a request in; false once the listener is closing.
func (w *webServer) enter() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	w.handlers.Add(1)
	return true
}

// startWeb opens the web listener when the config asks for one. A port
// another process holds does not stop the daemon: the socket still
// serves, the log says why, and `ember web` says it too (d.webReason).
func (d *Daemon) startWeb(ctx context.Context) {
	if d.webAddr == "" {
		if !d.cfg.Web {
			d.webReason = "the web listener is off (`web = false` in " + d.layout.Config + ")"
			return
		}
		d.webAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(d.cfg.WebPort))
	}
	token, err := loadOrCreateToken(d.layout.WebToken())
	if err != nil {
		d.webReason = fmt.Sprintf("no web token: %v", err)
		d.log.Warn("web listener not started", "err", err)
		return
	}
	l, err := net.Listen("tcp", d.webAddr)
	if err != nil {
		d.webReason = fmt.Sprintf("listen on %s: %v (set `web_port` in %s)", d.webAddr, err, d.layout.Config)
		d.log.Warn("web listener not started", "addr", d.webAddr, "err", err)
		return
	}
	timeout := d.requestTimeout
	if timeout <= 0 {
		timeout = defaultRequestTimeout
	}
	maxConns := d.maxConns
	if maxConns <= 0 {
		maxConns = defaultMaxConns
	}
	w := &webServer{d: d, token: token, url: "http://" + l.Addr().String() + "/",
		streams: newConnLimiter(maxConns, timeout), assets: webui.Files(), metrics: d.metrics.handler()}
	w.srv = &http.Server{Handler: w.routes(ctx), ReadHeaderTimeout: webHeaderTimeout, MaxHeaderBytes: webMaxHeader,
		IdleTimeout: webIdleTimeout, BaseContext: func(net.Listener) context.Context { return ctx },
		ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelDebug)}
	// As many connections at once as the socket serves, streams included;
	// past that, Accept waits for one to end.
	l = netutil.LimitListener(l, 2*maxConns)
	d.web = w
	d.log.Info("web dashboard listening", "url", w.url)
	goSafe(&d.background, d.log, "web listener", nil, func() {
		if err := w.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("web listener ended", "err", err)
		}
	})
}

// closeWeb stops the web listener and ends its connections, streams
// included (serveConn ends those with the daemon's base context too).
func (d *Daemon) closeWeb() {
	w := d.web
	if w == nil {
		return
	}
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.srv.Close()
	w.streams.closeWaiting()
	w.handlers.Wait()
}

// webInfo answers daemon.web: the address with the token, for `ember web`.
func (d *Daemon) webInfo() wire.WebInfo {
	if d.web == nil {
		reason := d.webReason
		if reason == "" {
			reason = "the daemon is not serving yet"
		}
		return wire.WebInfo{Reason: reason}
	}
	return wire.WebInfo{URL: d.web.url + "?token=" + url.QueryEscape(d.web.token)}
}

// loadOrCreateToken keeps the token of an earlier start (a dashboard left
// open goes on working after a daemon restart) when its file is the
// daemon's own regular 0600 file with a well-formed token; otherwise it
// writes a new one. The file is never followed through a symlink.
func loadOrCreateToken(path string) (string, error) {
	if f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0); err == nil {
		fi, serr := f.Stat()
		b, rerr := io.ReadAll(io.LimitReader(f, 256))
		f.Close()
		st, _ := fi.Sys().(*syscall.Stat_t)
		if serr == nil && rerr == nil && fi.Mode().IsRegular() && fi.Mode().Perm() == 0o600 &&
			st != nil && int(st.Uid) == os.Geteuid() && validToken(strings.TrimSpace(string(b))) {
			return strings.TrimSpace(string(b)), nil
		}
	}
	raw := make([]byte, webTokenBytes)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	token := base64.RawURLEncoding.EncodeToString(raw)
	// A new file under a temporary name, renamed over whatever was there
	// (a symlink is replaced, never written through).
	tmp, err := os.CreateTemp(dirOf(path), ".web-token-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return "", err
	}
	if _, err := tmp.WriteString(token + "\n"); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	return token, nil
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, '/'); i > 0 {
		return path[:i]
	}
	return "."
}

func validToken(s string) bool {
	b, err := base64.RawURLEncoding.DecodeString(s)
	return err == nil && len(b) == webTokenBytes
}

// routes is the listener's handler: everything behind the token check
// but the login page.
func (w *webServer) routes(ctx context.Context) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/{method}", w.apiCall)
	mux.HandleFunc("GET /api/ws", func(rw http.ResponseWriter, r *http.Request) { w.apiStream(ctx, rw, r) })
	mux.Handle("GET /metrics", w.metrics)
	mux.HandleFunc("GET /", w.page)
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if !w.enter() {
			http.Error(rw, "the daemon is shutting down", http.StatusServiceUnavailable)
			return
		}
		defer w.handlers.Done()
		h := rw.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		// The page loads nothing from anywhere but here (xterm.js sets
		// its theme through a style element of its own).
		h.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
		if !loopbackHost(r.Host) {
			// A name that resolved to 127.0.0.1 (DNS rebinding) is not
			// this dashboard's origin.
			http.Error(rw, "this dashboard answers only as 127.0.0.1, localhost or [::1]", http.StatusMisdirectedRequest)
			return
		}
		if t := r.URL.Query().Get("token"); t != "" && r.Method == http.MethodGet && w.tokenOK(t) {
			// The first visit: the token goes into a cookie and out of
			// the address bar and history.
			http.SetCookie(rw, &http.Cookie{Name: wire.WebTokenCookie, Value: w.token, Path: "/",
				HttpOnly: true, SameSite: http.SameSiteStrictMode})
			q := r.URL.Query()
			q.Del("token")
			// One leading slash: "//host" would send the browser away.
			u := url.URL{Path: "/" + strings.TrimLeft(r.URL.Path, "/"), RawQuery: q.Encode()}
			http.Redirect(rw, r, u.String(), http.StatusSeeOther)
			return
		}
		if !w.authorized(r) {
			w.refuse(rw, r)
			return
		}
		mux.ServeHTTP(rw, r)
	})
}

// loopbackHost reports whether a request's Host names the loopback
// interface.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// tokenOK compares in constant time.
func (w *webServer) tokenOK(t string) bool {
	return subtle.ConstantTimeCompare([]byte(t), []byte(w.token)) == 1
}

func (w *webServer) authorized(r *http.Request) bool {
	if c, err := r.Cookie(wire.WebTokenCookie); err == nil && w.tokenOK(c.Value) {
		return true
	}
	if a, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && w.tokenOK(a) {
		return true
	}
	return false
}

// refuse answers a request without the token: 401 for the API, the
// websocket and /metrics; the login page (still 401) for a page.
func (w *webServer) refuse(rw http.ResponseWriter, r *http.Request) {
	rw.Header().Set("WWW-Authenticate", `Bearer realm="ember"`)
	if strings.HasPrefix(r.URL.Path, "/api/") || r.URL.Path == "/metrics" {
		writeHTTPError(rw, wire.Errorf("unauthorized", "the web token is missing or wrong: `ember web` prints the address with it"), http.StatusUnauthorized)
		return
	}
	rw.Header().Set("Content-Type", "text/html; charset=utf-8")
	rw.WriteHeader(http.StatusUnauthorized)
	_, _ = io.WriteString(rw, loginPage)
}

// loginPage asks for the token; its form sends it as ?token=, which the
// handler turns into the cookie.
const loginPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ember: sign in</title></head>
<body><main id="login">
<h1>ember</h1>
<p>This dashboard needs its token. Run <code>ember web</code> on this host and open the address it prints, or paste the token:</p>
<form method="get" action="/"><input name="token" type="password" autocomplete="off" aria-label="token" autofocus> <button type="submit">Sign in</button></form>
</main></body></html>
`

// apiCall answers POST /api/METHOD: the body is the params as JSON (at
// most maxRequestLine bytes), the answer wire.Response as on the socket,
// through the same dispatch. Streams need the websocket.
func (w *webServer) apiCall(rw http.ResponseWriter, r *http.Request) {
	method := r.PathValue("method")
	if !sameOrigin(r) {
		writeHTTPError(rw, invalidf("cross-origin requests are refused"), http.StatusForbidden)
		return
	}
	if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); strings.TrimSpace(ct) != "application/json" {
		writeHTTPError(rw, invalidf("the params must be sent as application/json"), http.StatusUnsupportedMediaType)
		return
	}
	if wire.IsStream(method) {
		writeHTTPError(rw, invalidf("%s is a stream: open it on the websocket /api/ws", method), http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, maxRequestLine))
	if err != nil {
		writeHTTPError(rw, invalidf("request body: %v (at most %d bytes)", err, maxRequestLine), http.StatusRequestEntityTooLarge)
		return
	}
	if len(body) > 0 && !json.Valid(body) {
		writeHTTPError(rw, invalidf("%s: the params are not JSON", method), http.StatusBadRequest)
		return
	}
	var res any
	func() {
		// The socket's recover rule: a panic fails this request only.
		defer func() {
			if p := recover(); p != nil {
				res, err = nil, panicError(w.d.log, "web request "+method, p)
			}
		}()
		res, err = w.d.dispatch(r.Context(), wire.Request{Method: method, Params: body}, &streamConn{})
	}()
	rw.Header().Set("Content-Type", "application/json")
	if err != nil {
		rw.WriteHeader(httpStatus(toWireError(err).Code))
	}
	writeResponse(rw, res, err)
}

// apiStream upgrades GET /api/ws to a websocket that carries exactly what
// a socket connection does: a request line, its response, then frames,
// as binary messages. It is served by serveConn with the socket's bounds
// (the request line's size and deadline; at most maxConns at once).
func (w *webServer) apiStream(ctx context.Context, rw http.ResponseWriter, r *http.Request) {
	// Accept refuses an Origin other than the page's own (no
	// OriginPatterns, no InsecureSkipVerify).
	c, err := websocket.Accept(rw, r, nil)
	if err != nil {
		return
	}
	nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
	_ = nc.SetReadDeadline(time.Now().Add(w.streams.timeout))
	wc, ok := w.streams.admit(ctx, nc)
	if !ok {
		refuse(nc, wire.Errorf(wire.CodeBusy, "daemon busy: it serves %d web streams, its limit", w.streams.max))
		return
	}
	defer w.streams.release()
	w.d.serveConn(ctx, nc, w.streams, wc)
}

// sameOrigin: a request with an Origin must come from this dashboard.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

func writeHTTPError(rw http.ResponseWriter, err error, status int) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(status)
	writeResponse(rw, nil, err)
}

// httpStatus is the HTTP status of a wire error code.
func httpStatus(code string) int {
	switch code {
	case wire.CodeNotFound:
		return http.StatusNotFound
	case wire.CodeConflict:
		return http.StatusConflict
	case wire.CodeInvalid:
		return http.StatusBadRequest
	case wire.CodeBusy:
		return http.StatusServiceUnavailable
	case wire.CodeTimeout:
		return http.StatusGatewayTimeout
	case wire.CodeGone:
		return http.StatusGone
	case wire.CodeCancelled:
		return 499
	}
	return http.StatusInternalServerError
}

// page serves the dashboard's files; any other path is the dashboard
// itself (its script reads the address). Missing built files (make
// builds them from npm) are named instead of a broken page.
func (w *webServer) page(rw http.ResponseWriter, r *http.Request) {
	if missing := webui.Missing(); len(missing) > 0 {
		http.Error(rw, "the dashboard's files were not built into this binary (missing "+strings.Join(missing, ", ")+
			"): build ember with `make build`, which fetches them with npm", http.StatusServiceUnavailable)
		return
	}
	name := strings.TrimPrefix(r.URL.Path, "/")
	if name == "" || !strings.Contains(name, ".") {
		name = "index.html"
	}
	http.ServeFileFS(rw, r, w.assets, name)
}

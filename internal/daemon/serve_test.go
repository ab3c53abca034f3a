package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// flakyListener fails Accept with errs, in order, then accepts for real.
type flakyListener struct {
	net.Listener
	mu     sync.Mutex
	errs   []error
	failed int
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		l.failed++
		l.mu.Unlock()
		return nil, err
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

func (l *flakyListener) failures() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed
}

// acceptErr is an Accept error as the net package returns it.
func acceptErr(errno syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", errno)}
}

// listVMs is the request every test of this file uses to show the daemon
// still answers.
func listVMs(t *testing.T, c *client.Client) []wire.VM {
	t.Helper()
	var vms []wire.VM
	if err := c.Call(context.Background(), "vm.list", nil, &vms); err != nil {
		t.Fatalf("vm.list: %v", err)
	}
	return vms
}

// readResponse reads one response line from a raw connection.
func readResponse(t *testing.T, c net.Conn) wire.Response {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		t.Fatalf("read response: %v (got %q)", err, line)
	}
	var resp wire.Response
	if err := json.Unmarshal(line, &resp); err != nil {
		t.Fatalf("response %q: %v", line, err)
	}
	return resp
}

func wantRespCode(t *testing.T, resp wire.Response, code, inMessage string) {
	t.Helper()
	if resp.Error == nil || resp.Error.Code != code || !strings.Contains(resp.Error.Message, inMessage) {
		t.Fatalf("want a %s error saying %q, got %+v", code, inMessage, resp.Error)
	}
}

// openFDs is how many descriptors this process has open.
func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// settleFDs waits until the process is back to want descriptors (the
// daemon's side of closed connections closes as its goroutines leave).
func settleFDs(t *testing.T, want int) {
	t.Helper()
	got := openFDs(t)
	for deadline := time.Now().Add(30 * time.Second); got > want && time.Now().Before(deadline); got = openFDs(t) {
		time.Sleep(20 * time.Millisecond)
	}
	if got > want {
		t.Fatalf("%d descriptors open, %d before: connections leaked", got, want)
	}
}

// Accept errors from exhaustion (EMFILE, ENFILE, ENOBUFS, an aborted
// connection) wait and retry: Serve goes on and answers; any other
// accept error still ends it, with the error.
func TestAcceptErrorsDoNotEndServe(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	l, err := net.Listen("unix", td.layout.Socket())
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: l, errs: []error{acceptErr(syscall.EMFILE), acceptErr(syscall.EMFILE),
		acceptErr(syscall.EMFILE), acceptErr(syscall.EMFILE), acceptErr(syscall.ENFILE), acceptErr(syscall.ENOBUFS),
		acceptErr(syscall.ECONNABORTED)}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- td.serveListener(ctx, fl) }()
	c := &client.Client{Socket: td.layout.Socket()}
	listVMs(t, c)
	if n := fl.failures(); n != 7 {
		t.Fatalf("accept failed %d times, want all 7 errors met", n)
	}
	select {
	case err := <-done:
		t.Fatalf("Serve ended after temporary accept errors: %v", err)
	default:
	}
	listVMs(t, c)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}

	// A listener that is broken for good still ends Serve, with the cause.
	l2, err := net.Listen("unix", td.layout.Socket()+"2")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	broken := &flakyListener{Listener: l2, errs: []error{acceptErr(syscall.EINVAL)}}
	if err := td.serveListener(context.Background(), broken); err == nil || !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Serve on a broken listener: %v", err)
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if !retryableAccept(acceptErr(e)) {
			t.Errorf("%v is not retried", e)
		}
	}
}

// raiseNoFile lifts the soft descriptor limit towards want, as far as the
// hard limit allows, for the test's duration.
func raiseNoFile(t *testing.T, want uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= want {
		return
	}
	old := lim
	lim.Cur = min(want, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	if lim.Cur < want {
		t.Skipf("RLIMIT_NOFILE hard limit %d is below the %d descriptors this test needs", lim.Max, want)
	}
}

// 2,000 connections that never send a request: the daemon serves at most
// defaultMaxConns at once (a goroutine each, no more), sheds the oldest
// silent one with a busy line for each newcomer, vm.list still answers,
// and once the clients leave no descriptor or goroutine is left.
func TestIdleConnectionsAreCapped(t *testing.T) {
	const n = 2000
	raiseNoFile(t, 2*n+512)
	td := openTestDaemon(t, "", newFakeDriver())
	c, stop := serveStoppable(t, td)
	fds := openFDs(t)
	goroutines := runtime.NumGoroutine()

	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	for i := 0; i < n; i++ {
		cn, err := net.Dial("unix", td.layout.Socket())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, cn)
	}
	// Accepted in order, so the oldest are shed first.
	shed := n - defaultMaxConns
	for i, cn := range conns[:shed] {
		resp := readResponse(t, cn)
		if i == 0 {
			wantRespCode(t, resp, wire.CodeBusy, "sent no request")
		} else if resp.Error == nil || resp.Error.Code != wire.CodeBusy {
			t.Fatalf("connection %d: want busy, got %+v", i, resp)
		}
	}
	if extra := runtime.NumGoroutine() - goroutines; extra > defaultMaxConns+16 {
		t.Fatalf("%d goroutines for %d held connections: not capped", extra, defaultMaxConns)
	}
	// A working client gets in: the oldest silent connection makes room.
	listVMs(t, c)
	if resp := readResponse(t, conns[shed]); resp.Error == nil || resp.Error.Code != wire.CodeBusy {
		t.Fatalf("the oldest silent connection was not shed for vm.list: %+v", resp)
	}
	// The rest still hold their slots: open, no answer yet.
	deadline := time.Now().Add(100 * time.Millisecond)
	for i, cn := range conns[shed+1:] {
		_ = cn.SetReadDeadline(deadline)
		if _, err := cn.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection %d: want still waiting, got %v", shed+1+i, err)
		}
	}
	for _, cn := range conns {
		cn.Close()
	}
	conns = nil
	listVMs(t, c)
	stop()
	settleFDs(t, fds)
}

// When every slot serves a request or stream (none is silent), a new
// connection is refused with busy; when one ends, the next gets in.
func TestBusyWhenEverySlotWorks(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	td.maxConns = 3
	c := serve(t, td)
	if _, err := createAndWait(t, c, wire.CreateVMParams{Name: "v1"}); err != nil {
		t.Fatal(err)
	}
	var streams []*client.Stream
	for i := 0; i < 3; i++ {
		s, err := c.OpenStream(context.Background(), "vm.logs", wire.LogsParams{Ref: "v1", Follow: true})
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		defer s.Close()
		streams = append(streams, s)
	}
	err := c.Call(context.Background(), "vm.list", nil, nil)
	wantCode(t, err, wire.CodeBusy)
	if !strings.Contains(err.Error(), "all are working") {
		t.Fatalf("busy says: %v", err)
	}
	streams[0].Close()
	var lastErr error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if lastErr = c.Call(context.Background(), "vm.list", nil, nil); lastErr == nil {
			return
		}
	}
	t.Fatalf("vm.list after a stream ended: %v", lastErr)
}

// sendLine writes line on a new connection (while reading) and returns
// the daemon's answer.
func sendLine(t *testing.T, sock string, line []byte) wire.Response {
	t.Helper()
	cn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = cn.Write(line) // fails once the daemon has had enough
	}()
	resp := readResponse(t, cn)
	cn.Close()
	<-wrote
	return resp
}

// A request line past 1 MiB gets invalid and its connection closes; the
// daemon reads no more of it than the limit, so even a 64 MiB line costs
// a few MiB of allocation; a line just under the limit is served.
func TestRequestLineIsBounded(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	sock := td.layout.Socket()

	pad := strings.Repeat("a", maxRequestLine-64)
	resp := sendLine(t, sock, []byte(`{"method":"vm.list","params":{"pad":"`+pad+`"}}`+"\n"))
	if resp.Error != nil {
		t.Fatalf("a request just under the limit: %v", resp.Error)
	}

	huge := bytes.Repeat([]byte{'a'}, 64<<20) // no newline
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, line := range [][]byte{huge[:2<<20], huge} {
		wantRespCode(t, sendLine(t, sock, line), wire.CodeInvalid, "request line longer than 1048576 bytes")
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 24<<20 {
		t.Fatalf("reading two over-long request lines allocated %d MiB: not bounded", grew>>20)
	}
	// A line that is not JSON is invalid too.
	wantRespCode(t, sendLine(t, sock, []byte("hello\n")), wire.CodeInvalid, "bad request")
	listVMs(t, c)
}

// A connection that sends nothing is answered timeout after the request
// deadline and closed; a stream, once its request is in, idles as long
// as it likes.
func TestRequestDeadlineSparesIdleStreams(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	td.requestTimeout = 200 * time.Millisecond
	c := serve(t, td)
	if _, err := createAndWait(t, c, wire.CreateVMParams{Name: "v1"}); err != nil {
		t.Fatal(err)
	}
	cn, err := net.Dial("unix", td.layout.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	wantRespCode(t, readResponse(t, cn), wire.CodeTimeout, "no request line within 200ms")

	s, err := c.OpenStream(context.Background(), "vm.logs", wire.LogsParams{Ref: "v1", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	time.Sleep(5 * td.requestTimeout) // idle, well past the request deadline
	var vm wire.VM
	if err := c.Call(context.Background(), "vm.inspect", wire.RefParams{Ref: "v1"}, &vm); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(vm.Console, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString("after a long idle\n")
	f.Close()
	var got []byte
	for !bytes.Contains(got, []byte("after a long idle")) {
		kind, p, err := s.Recv()
		if err != nil || kind == wire.FrameExit {
			t.Fatalf("idle stream ended (%v) after %q", err, got)
		}
		got = append(got, p...)
	}
	listVMs(t, c)
}

// syncBuffer is a log destination several goroutines write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A panic in a handler, in a goroutine a stream started, after a stream
// opened, or in a create's background work fails that request or
// operation with internal, logged with its stack; the daemon answers on,
// and the failed create leaves nothing.
func TestPanicFailsOnlyItsRequest(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	var logs syncBuffer
	td.log = slog.New(slog.NewTextHandler(&logs, nil))
	td.methods["test.panic"] = func(context.Context, json.RawMessage, *streamConn) (any, error) {
		panic("boom in a handler")
	}
	td.methods["test.panic_in_stream_goroutine"] = func(ctx context.Context, _ json.RawMessage, sc *streamConn) (any, error) {
		if err := sc.startStream(); err != nil {
			return nil, nil
		}
		goSafe(nil, td.log, "test stream helper", sc.fail, func() { panic("boom in a stream goroutine") })
		<-ctx.Done() // the connection's end
		return nil, nil
	}
	td.methods["test.panic_after_stream"] = func(_ context.Context, _ json.RawMessage, sc *streamConn) (any, error) {
		if err := sc.startStream(); err != nil {
			return nil, nil
		}
		_ = wire.WriteFrame(sc, wire.FrameStdout, []byte("before"))
		panic("boom in a stream")
	}
	td.boot.prepare = func(context.Context, bootRequest) (bootFiles, error) { panic("boom in a create") }
	c := serve(t, td)
	ctx := context.Background()

	err := c.Call(ctx, "test.panic", nil, nil)
	wantCode(t, err, wire.CodeInternal)
	if !strings.Contains(err.Error(), "boom in a handler") {
		t.Fatalf("error: %v", err)
	}
	listVMs(t, c)

	for _, m := range []string{"test.panic_in_stream_goroutine", "test.panic_after_stream"} {
		s, err := c.OpenStream(ctx, m, nil)
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		for {
			kind, p, err := s.Recv()
			if err != nil {
				t.Fatalf("%s: stream ended without an exit frame: %v", m, err)
			}
			if kind != wire.FrameExit {
				continue
			}
			ex, _ := client.DecodeExit(p)
			if ex.Error == nil || ex.Error.Code != wire.CodeInternal || !strings.Contains(ex.Error.Message, "boom in a stream") {
				t.Fatalf("%s: exit %+v", m, ex)
			}
			break
		}
		s.Close()
		listVMs(t, c)
	}

	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	if op.State != wire.OpFailed || op.ErrorCode != wire.CodeInternal || !strings.Contains(op.Error, "boom in a create") {
		t.Fatalf("create that panicked: %+v", op)
	}
	if vms := listVMs(t, c); len(vms) != 0 {
		t.Fatalf("a create that panicked left %+v", vms)
	}
	if td.drv.running() != 0 {
		t.Fatal("a create that panicked left a process")
	}
	out := logs.String()
	for _, want := range []string{"recovered from a panic", "boom in a handler", "boom in a stream goroutine", "goroutine ", "serve_test.go"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// Every goroutine the daemon starts runs under the recover rule: the
// only go statement of the package is goSafe's.
func TestEveryGoroutineRecovers(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Name.Name == "goSafe" {
				continue
			}
			ast.Inspect(fd, func(n ast.Node) bool {
				if g, ok := n.(*ast.GoStmt); ok {
					t.Errorf("%s: %s starts a goroutine with a go statement; use goSafe, so a panic in it fails one request, not the daemon",
						fset.Position(g.Pos()), fd.Name.Name)
				}
				return true
			})
		}
	}
}

package vmdns

import (
	"errors"
	"hash/maphash"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// silentUpstream is a UDP resolver on loopback that takes queries and
// never answers; it counts them.
type silentUpstream struct {
	pc   net.PacketConn
	got  atomic.Int64
	done chan struct{}
}

func newSilentUpstream(t *testing.T) *silentUpstream {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &silentUpstream{pc: pc, done: make(chan struct{})}
	go func() {
		defer close(u.done)
		buf := make([]byte, 512)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			u.got.Add(1)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-u.done })
	return u
}

// waitUntil polls cond for up to 30 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// A flood of recursive queries against an upstream that never answers:
// forwards in flight stay at the cap (one goroutine and one socket each,
// no more), every query beyond it gets SERVFAIL at once, and VM names
// and the other slow-path answers go on.
func TestForwardsAreCapped(t *testing.T) {
	const maxFwd, n = 16, 1000
	up := newSilentUpstream(t)
	s, addr := start(t, Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24"),
		AllowRecurs: []*net.IPNet{subnet("127.0.0.0/8")}, Upstreams: []string{up.pc.LocalAddr().String()},
		MaxForwards: maxFwd, ClientRate: 1e9, ClientBurst: 1e9, ForwardTimeout: time.Hour})
	s.Set("vm1", net.ParseIP("10.231.0.2"))
	goroutines := runtime.NumGoroutine()

	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var servfail, other atomic.Int64
	read := make(chan struct{})
	go func() {
		defer close(read)
		buf := make([]byte, 512)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:k]) == nil && m.Rcode == dns.RcodeServerFailure {
				servfail.Add(1)
			} else {
				other.Add(1)
			}
		}
	}()
	defer func() { c.Close(); <-read }()

	peak := 0
	for sent := 0; sent < n; {
		for i := 0; i < 50; i++ {
			m := new(dns.Msg)
			m.SetQuestion("q.example.com.", dns.TypeA)
			m.Id = uint16(sent + 1)
			if _, err := c.Write(pack(t, m)); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		// Each query is either in flight (the upstream has it) or failed.
		waitUntil(t, "every query is forwarded or answered", func() bool {
			return servfail.Load()+up.got.Load() == int64(sent)
		})
		peak = max(peak, runtime.NumGoroutine()-goroutines)
	}
	if got := up.got.Load(); got != maxFwd {
		t.Fatalf("%d queries reached the upstream, want the cap %d", got, maxFwd)
	}
	if got := servfail.Load(); got != n-maxFwd || other.Load() != 0 {
		t.Fatalf("%d SERVFAIL and %d other answers, want %d SERVFAIL", got, other.Load(), n-maxFwd)
	}
	if len(s.forwards) != maxFwd {
		t.Fatalf("%d forwards in flight, want %d", len(s.forwards), maxFwd)
	}
	if peak > maxFwd+32 {
		t.Fatalf("%d goroutines for %d forwards in flight: not bounded", peak, maxFwd)
	}
	// Meanwhile: VM names (fast path), PTR (slow path) and TCP answer.
	if r := query(t, "udp", addr, "vm1.ember.test", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("vm name during the flood: %v", r)
	}
	if r := query(t, "udp", addr, "2.0.231.10.in-addr.arpa", dns.TypePTR); len(r.Answer) != 1 {
		t.Fatalf("ptr during the flood: %v", r)
	}
	if r := query(t, "tcp", addr, "vm1.ember.test", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("tcp during the flood: %v", r)
	}
	if r := query(t, "tcp", addr, "other.example.com", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("tcp forward at the cap: %v", r)
	}
	// Close ends the forwards in flight at once (TestMain checks that no
	// goroutine is left).
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if len(s.forwards) != 0 {
		t.Fatalf("%d forwards left after Close", len(s.forwards))
	}
}

// otherLoopback is a loopback address whose bucket is not a's.
func otherLoopback(l *clientLimiter, a netip.Addr) netip.Addr {
	slot := func(x netip.Addr) uint64 { return maphash.Comparable(l.seed, x) % limiterSlots }
	b := a.Next()
	for slot(b) == slot(a) {
		b = b.Next()
	}
	return b
}

// A client past its rate gets REFUSED on the slow path (UDP and TCP);
// its VM-name answers and other clients are not affected.
func TestClientRateLimit(t *testing.T) {
	const burst = 20
	s, addr := start(t, Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24"),
		AllowRecurs: []*net.IPNet{subnet("127.0.0.0/8")}, ClientRate: 0.001, ClientBurst: burst})
	s.Set("vm1", net.ParseIP("10.231.0.2"))
	counts := map[int]int{}
	for i := 0; i < 3*burst; i++ {
		r := query(t, "udp", addr, "9.0.231.10.in-addr.arpa", dns.TypePTR) // slow path: NXDOMAIN
		counts[r.Rcode]++
	}
	if counts[dns.RcodeNameError] != burst || counts[dns.RcodeRefused] != 2*burst {
		t.Fatalf("answers by rcode %v: want %d NXDOMAIN then REFUSED", counts, burst)
	}
	if r := query(t, "tcp", addr, "9.0.231.10.in-addr.arpa", dns.TypePTR); r.Rcode != dns.RcodeRefused {
		t.Fatalf("tcp past the rate: %v", r)
	}
	if r := query(t, "udp", addr, "vm1.ember.test", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("vm name past the rate: %v", r)
	}
	other := otherLoopback(s.limiter, netip.MustParseAddr("127.0.0.1"))
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: other.AsSlice()}}}
	m := new(dns.Msg)
	m.SetQuestion("9.0.231.10.in-addr.arpa.", dns.TypePTR)
	r, _, err := c.Exchange(m, addr)
	if err != nil || r.Rcode != dns.RcodeNameError {
		t.Fatalf("another client (%s): %v %v", other, r, err)
	}
}

func TestLimiterRefills(t *testing.T) {
	l := newClientLimiter(10, 3)
	a := netip.MustParseAddr("10.231.0.2")
	for i := 0; i < 3; i++ {
		if !l.allowAt(a, 0) {
			t.Fatalf("query %d of the burst refused", i)
		}
	}
	if l.allowAt(a, 0) {
		t.Fatal("a query past the burst allowed")
	}
	if !l.allowAt(a, 100*time.Millisecond) || l.allowAt(a, 100*time.Millisecond) {
		t.Fatal("100 ms at 10/s is one more query")
	}
	if !l.allowAt(a, time.Hour) || !l.allowAt(a, time.Hour) || !l.allowAt(a, time.Hour) || l.allowAt(a, time.Hour) {
		t.Fatal("a long pause refills the burst, no more")
	}
	// The v4-mapped form of an address is the same client.
	if l.allowAt(netip.AddrFrom16(a.As16()), time.Hour) {
		t.Fatal("a v4-mapped address has a bucket of its own")
	}
}

// flakyListener fails Accept with errs, in order, then accepts for real.
type flakyListener struct {
	net.Listener
	mu   sync.Mutex
	errs []error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		l.mu.Unlock()
		return nil, err
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// The TCP listener retries accept errors that pass (instead of handing
// them to miekg's server, which retries at once), and serves at most its
// cap of connections: the next waits until one closes.
func TestTCPListenerCapsAndBacksOff(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	l := newTCPListener(&flakyListener{Listener: inner, errs: []error{emfile, emfile, emfile}}, 2)
	defer l.Close()
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	var served []net.Conn
	for i := 0; i < 2; i++ {
		c, err := l.Accept()
		if err != nil {
			t.Fatalf("accept %d after EMFILE: %v", i, err)
		}
		served = append(served, c)
	}
	third := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			third <- c
		}
		close(third)
	}()
	select {
	case <-third:
		t.Fatal("a third connection was served past the cap of 2")
	case <-time.After(100 * time.Millisecond):
	}
	served[0].Close()
	c, ok := <-third
	if !ok {
		t.Fatal("the third connection was not served after one closed")
	}
	c.Close()
	served[1].Close()
	l.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept after close: %v", err)
	}
}

// panicWriter fails the way a bug while answering would.
type panicWriter struct{ captureWriter }

func (panicWriter) RemoteAddr() net.Addr { panic("boom") }

// A panic while answering a query costs that query only.
func TestPanicDropsOneQuery(t *testing.T) {
	var logs strings.Builder
	s := New(Config{Domain: "ember.test", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	m := new(dns.Msg)
	m.SetQuestion("example.com.", dns.TypeA)
	s.serveTCP(&panicWriter{}, m) // returns
	if !strings.Contains(logs.String(), "recovered from a panic") || !strings.Contains(logs.String(), "limits_test.go") {
		t.Fatalf("the panic was not logged with its stack:\n%s", logs.String())
	}
}

package vmdns

import (
	"errors"
	"fmt"
	"hash/maphash"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
)

// Guests are untrusted clients, so what the server spends for them is
// bounded. The fast path (a VM name, answered in the read loop with no
// allocation) costs the same per packet as the sender spends and is not
// limited; everything else is:
//
//   - forwarded queries in flight, over all clients, at most MaxForwards
//     (each holds a goroutine and an upstream socket until it is answered
//     or times out); beyond the cap a query gets SERVFAIL at once;
//   - slow-path goroutines (UDP), at most slowPerForward × MaxForwards;
//     beyond that a query is answered in the read loop, without
//     forwarding;
//   - per client address, ClientRate slow-path queries a second with
//     bursts of ClientBurst (a token bucket); beyond it REFUSED;
//   - TCP connections served at once, maxTCPConns; more wait in the
//     listen backlog, and accept errors back off instead of spinning.
//
// A panic while answering one query is logged and drops that query only.
const (
	defaultMaxForwards = 256
	defaultClientRate  = 100 // slow-path queries per second per client
	defaultClientBurst = 200
	slowPerForward     = 2
	maxTCPConns        = 128
	// limiterSlots is the size of the token-bucket table: addresses hash
	// into it, so a client that changes its source address for every
	// query costs no memory (colliding clients share a bucket).
	limiterSlots = 4096
	// Accept back-off, as net/http's: 5 ms doubling up to 1 s.
	acceptRetryMin = 5 * time.Millisecond
	acceptRetryMax = time.Second
)

// clientLimiter is a token bucket per client address.
type clientLimiter struct {
	rate, burst float64
	seed        maphash.Seed
	start       time.Time

	mu      sync.Mutex
	buckets [limiterSlots]bucket
}

type bucket struct {
	used   bool
	tokens float64
	last   time.Duration // since start
}

func newClientLimiter(rate float64, burst int) *clientLimiter {
	return &clientLimiter{rate: rate, burst: float64(burst), seed: maphash.MakeSeed(), start: time.Now()}
}

// allow takes a token of addr's bucket; false when it has none.
func (l *clientLimiter) allow(addr netip.Addr) bool {
	return l.allowAt(addr, time.Since(l.start))
}

func (l *clientLimiter) allowAt(addr netip.Addr, now time.Duration) bool {
	i := maphash.Comparable(l.seed, addr.Unmap()) % limiterSlots
	l.mu.Lock()
	defer l.mu.Unlock()
	b := &l.buckets[i]
	if !b.used {
		b.used, b.tokens = true, l.burst
	} else if now > b.last {
		b.tokens = min(l.burst, b.tokens+(now-b.last).Seconds()*l.rate)
	}
	b.last = max(b.last, now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// clientAddr is the address of a query's sender.
func clientAddr(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr(), true
	case *net.TCPAddr:
		return a.AddrPort().Addr(), true
	}
	return netip.Addr{}, false
}

// takeForward takes a slot for a forwarded query; false at the cap.
func (s *Server) takeForward() bool {
	select {
	case s.forwards <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s *Server) doneForward() { <-s.forwards }

// recoverQuery is deferred where a query is answered: a panic is logged
// with its stack and costs that query its answer, never the server.
func (s *Server) recoverQuery(what string) {
	if r := recover(); r != nil {
		s.cfg.Logger.Error("dns: recovered from a panic: the query is dropped, the server goes on",
			"in", what, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	}
}

// tcpListener serves at most maxTCPConns connections at once (Accept
// waits for a slot) and backs off on accept errors that pass (out of
// descriptors, say): miekg's server starts a goroutine per connection and
// retries such errors at once.
type tcpListener struct {
	net.Listener
	slots     chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newTCPListener(l net.Listener, max int) *tcpListener {
	return &tcpListener{Listener: l, slots: make(chan struct{}, max), done: make(chan struct{})}
}

func (l *tcpListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	var retry time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return &slotConn{Conn: c, release: func() { <-l.slots }}, nil
		}
		if !retryableAccept(err) {
			<-l.slots
			return nil, err
		}
		retry = min(max(2*retry, acceptRetryMin), acceptRetryMax)
		t := time.NewTimer(retry)
		select {
		case <-t.C:
		case <-l.done:
			t.Stop()
			<-l.slots
			return nil, net.ErrClosed
		}
	}
}

func (l *tcpListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// slotConn gives its listener's slot back when closed.
type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// retryableAccept reports whether an Accept error passes: out of
// descriptors, memory or buffers, or one connection gone before it was
// taken.
func retryableAccept(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Package vmdns is the DNS server on the bridge: it answers A and PTR for
// <vm>.<domain> from an in-memory table the daemon updates the moment a VM
// is created or deleted, NXDOMAIN for unknown VM names, and forwards every
// other name to the host's upstream resolvers — but only for clients inside
// the guest subnet, so it is never an open resolver. Every reply to a
// query with an EDNS OPT record carries one (ednsWriter). Its clients are
// guests, so what they can make it spend is bounded (limits.go): forwards
// in flight, goroutines, a rate per client, TCP connections.
package vmdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// ttl is short: a VM deleted and re-created gets new records at once.
const ttl = 5

// defaultForwardTimeout bounds one upstream exchange; with no upstream
// reachable a client gets SERVFAIL instead of hanging.
const defaultForwardTimeout = 2 * time.Second

// Config describes the zone and who may recurse.
type Config struct {
	Domain      string     // e.g. "ember.internal" (no trailing dot)
	Subnet      *net.IPNet // guest subnet: PTR zone, and the clients that may recurse
	Self        net.IP     // the server's own address, answered for the bare domain
	Upstreams   []string   // "ip:port" resolvers for other names; nil = none
	Logger      *slog.Logger
	AllowRecurs []*net.IPNet // extra networks that may recurse (tests)

	// Limits (limits.go); zero means the default.
	MaxForwards    int           // forwarded queries in flight, all clients together
	ClientRate     float64       // slow-path queries per second per client address
	ClientBurst    int           // and the burst above that rate
	ForwardTimeout time.Duration // one upstream exchange

	// SlowPathOnly answers every query through miekg's message code,
	// without the fast path: the benchmark's comparison (bench -dns).
	SlowPathOnly bool
}

// Server answers for one domain. Safe for concurrent use.
type Server struct {
	cfg    Config
	zone   string // fqdn of the domain, lower case
	client *dns.Client

	forwards chan struct{} // a slot per forwarded query in flight
	slow     chan struct{} // a slot per slow-path goroutine (UDP)
	limiter  *clientLimiter
	// ctx ends the forwards in flight when the server closes; set by New
	// and Start, before any query.
	ctx    context.Context
	cancel context.CancelFunc

	// mu guards byName, byIP and fast.
	mu     sync.RWMutex
	byName map[string]net.IP    // short VM name → address
	byIP   map[string]string    // dotted address → short VM name
	fast   map[string]fastEntry // wire-form lower-case name → fast-path answer
	// soaWire is the zone's SOA record as the fast path appends it.
	soaWire []byte

	tcp     *dns.Server
	udp     []*net.UDPConn
	wg      sync.WaitGroup // the UDP read loops and their slow-path handlers
	closing atomic.Bool    // set by Close: the read loops stop
	queries atomic.Uint64  // queries received, UDP and TCP (Queries)
	stop    sync.Mutex     // serialises Start and Close
}

// Queries is how many queries the server has received (the daemon's
// metrics), answered or refused, over UDP and TCP.
func (s *Server) Queries() uint64 { return s.queries.Load() }

// New makes a server; Start listens.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxForwards <= 0 {
		cfg.MaxForwards = defaultMaxForwards
	}
	if cfg.ClientRate <= 0 {
		cfg.ClientRate = defaultClientRate
	}
	if cfg.ClientBurst <= 0 {
		cfg.ClientBurst = defaultClientBurst
	}
	if cfg.ForwardTimeout <= 0 {
		cfg.ForwardTimeout = defaultForwardTimeout
	}
	s := &Server{cfg: cfg, zone: dns.Fqdn(strings.ToLower(cfg.Domain)),
		client:   &dns.Client{Timeout: cfg.ForwardTimeout},
		forwards: make(chan struct{}, cfg.MaxForwards), slow: make(chan struct{}, slowPerForward*cfg.MaxForwards),
		limiter: newClientLimiter(cfg.ClientRate, cfg.ClientBurst),
		byName:  map[string]net.IP{}, byIP: map[string]string{}, fast: map[string]fastEntry{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.soaWire = s.packSOA()
	if key, ok := fastKey(s.zone); ok && s.soaWire != nil {
		if e, ok := newFastEntry(cfg.Self, true); ok {
			s.fast[key] = e
		}
	}
	if s.soaWire == nil {
		clear(s.fast) // no SOA to answer NODATA with: the slow path decides
	}
	return s
}

// Set adds or replaces a VM's record.
func (s *Server) Set(name string, ip net.IP) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name = strings.ToLower(name)
	if old, ok := s.byName[name]; ok {
		delete(s.byIP, old.String())
	}
	s.byName[name] = ip
	s.byIP[ip.String()] = name
	if s.soaWire != nil {
		s.setFast(name, ip)
	}
}

// Remove drops a VM's record.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name = strings.ToLower(name)
	if ip, ok := s.byName[name]; ok {
		delete(s.byIP, ip.String())
		delete(s.byName, name)
		s.removeFast(name)
	}
}

// Rename moves a VM's record to a new name.
func (s *Server) Rename(from, to string) {
	s.mu.Lock()
	ip, ok := s.byName[strings.ToLower(from)]
	s.mu.Unlock()
	if ok {
		s.Remove(from)
		s.Set(to, ip)
	}
}

// Name is the fully qualified name of a VM, without the trailing dot.
func (s *Server) Name(vm string) string { return vm + "." + strings.TrimSuffix(s.zone, ".") }

// Start listens on addr ("ip:port") over UDP and TCP. Port 0 picks one
// port free for both. UDP gets one socket per two CPUs (SO_REUSEPORT; see
// udpSockets), each with its own read loop (serveUDP); TCP is served by
// miekg's server.
func (s *Server) Start(addr string) (string, error) {
	s.stop.Lock()
	defer s.stop.Unlock()
	s.closing.Store(false)
	if s.ctx.Err() != nil { // started again after Close
		s.ctx, s.cancel = context.WithCancel(context.Background())
	}
	var pcs []net.PacketConn
	var l net.Listener
	var err error
	closeAll := func() {
		for _, pc := range pcs {
			pc.Close()
		}
		pcs = nil
	}
	for attempt := 0; attempt < 20; attempt++ {
		pcs, err = listenUDP(addr, udpSockets())
		if err != nil {
			return "", fmt.Errorf("dns: listen udp %s: %w", addr, err)
		}
		taddr := pcs[0].LocalAddr().String()
		l, err = net.Listen("tcp", taddr)
		if err == nil {
			break
		}
		closeAll()
		if !strings.HasSuffix(addr, ":0") {
			return "", fmt.Errorf("dns: listen tcp %s: %w", taddr, err)
		}
	}
	if err != nil {
		return "", fmt.Errorf("dns: listen tcp %s: %w", addr, err)
	}
	srv := &dns.Server{Listener: newTCPListener(l, maxTCPConns), Handler: dns.HandlerFunc(s.serveTCP), MsgAcceptFunc: acceptQueries}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	s.tcp = srv
	go func() {
		if err := srv.ActivateAndServe(); err != nil {
			s.cfg.Logger.Warn("dns server ended", "err", err)
		}
	}()
	<-started
	for _, pc := range pcs {
		conn := pc.(*net.UDPConn)
		s.udp = append(s.udp, conn)
		s.wg.Add(1)
		go s.serveUDP(conn)
	}
	return pcs[0].LocalAddr().String(), nil
}

// udpSockets is how many UDP sockets (and read loops) to open. The kernel
// spreads clients over them, so answers are not bound to one core; but a
// loop answers a VM name in a few microseconds, and every extra loop that
// sleeps and wakes costs scheduler work on cores the guests need: half the
// CPUs measured cheaper per answer than one per CPU on a 2-core host
// (bench -net).
func udpSockets() int { return min(max(runtime.GOMAXPROCS(0)/2, 1), 8) }

// listenUDP opens n UDP sockets on one address with SO_REUSEPORT; with port
// 0 the first picks the port and the others join it.
func listenUDP(addr string, n int) ([]net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, serr)
	}}
	var pcs []net.PacketConn
	for i := 0; i < n; i++ {
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			for _, p := range pcs {
				p.Close()
			}
			return nil, err
		}
		if i == 0 {
			addr = pc.LocalAddr().String()
		}
		pcs = append(pcs, pc)
	}
	return pcs, nil
}

// Close stops listening, ends the forwards in flight (their clients get
// nothing) and waits for the queries in hand.
func (s *Server) Close() error {
	s.stop.Lock()
	defer s.stop.Unlock()
	s.closing.Store(true)
	s.cancel()
	var errs []error
	if s.tcp != nil {
		errs = append(errs, s.tcp.Shutdown())
		s.tcp = nil
	}
	for _, c := range s.udp {
		errs = append(errs, c.Close())
	}
	s.udp = nil
	s.wg.Wait()
	return errors.Join(errs...)
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) { s.serve(w, req, true) }

// serveTCP answers a query that came over TCP: rate-limited per client,
// as the UDP slow path is, and checked as serveSlow checks a datagram,
// so that what miekg's server would reject gets the same answer as over
// UDP, EDNS included.
func (s *Server) serveTCP(w dns.ResponseWriter, req *dns.Msg) {
	defer s.recoverQuery("tcp query")
	s.queries.Add(1)
	if a, ok := clientAddr(w.RemoteAddr()); ok && !s.limiter.allow(a) {
		refuse(w, req)
		return
	}
	if pkt, err := req.Pack(); err == nil {
		s.serveSlow(pkt, w, true)
		return
	}
	s.serve(w, req, true)
}

// acceptQueries is the TCP server's MsgAcceptFunc: it drops responses,
// as miekg's default does, and lets serveTCP judge the rest.
func acceptQueries(dh dns.Header) dns.MsgAcceptAction {
	if dh.Bits&flagQR != 0 {
		return dns.MsgIgnore
	}
	return dns.MsgAccept
}

// refuse answers REFUSED: the client is over its rate.
func refuse(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeRefused)
	_ = ednsWriter(w, req).WriteMsg(m)
}

// serve answers one query; a name to forward gets SERVFAIL at once when
// mayForward is false.
func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg, mayForward bool) {
	m := new(dns.Msg)
	if opts := countOPT(req); opts > 1 {
		// RFC 6891 §6.1.1: more than one OPT is a format error; which
		// one to answer is unknown, so the reply carries none.
		m.SetRcodeFormatError(req)
		_ = w.WriteMsg(m)
		return
	}
	w = ednsWriter(w, req)
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		// §6.1.3: a version this server does not implement.
		m.SetRcode(req, dns.RcodeBadVers)
		_ = w.WriteMsg(m)
		return
	}
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		m.SetRcode(req, dns.RcodeNotImplemented)
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	switch {
	case name == s.zone || strings.HasSuffix(name, "."+s.zone):
		s.answerZone(m, req, name, q)
	case s.inReverse(name):
		s.answerPTR(m, req, name, q)
	default:
		s.forward(w, req, mayForward)
		return
	}
	_ = w.WriteMsg(m)
}

// ednsUDPSize is the UDP payload size the server advertises in its OPT
// records: the size of datagram it reads (udpReadSize), the one DNS Flag
// Day 2020 settled on.
const ednsUDPSize = 1232

// countOPT is how many OPT records req's additional section holds.
func countOPT(req *dns.Msg) int {
	n := 0
	for _, rr := range req.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			n++
		}
	}
	return n
}

// ednsWriter makes every reply written through it carry the EDNS that
// RFC 6891 asks of a responder to req: an OPT record when req has one
// (§6.1.1), none otherwise (§7). The server's own OPT advertises
// ednsUDPSize, version 0, no options, and the DO bit clear: the server
// does no DNSSEC, so, as any server that does not implement it, it
// answers without DNSSEC records and leaves that flag zero (§6.1.4). An
// upstream's answer passed on keeps the upstream's options and flags (it
// is the upstream's answer to the client's own query) with this server's
// payload size.
func ednsWriter(w dns.ResponseWriter, req *dns.Msg) dns.ResponseWriter {
	return &ednsReplyWriter{ResponseWriter: w, req: req}
}

type ednsReplyWriter struct {
	dns.ResponseWriter
	req *dns.Msg
}

func (w *ednsReplyWriter) WriteMsg(m *dns.Msg) error {
	setReplyEDNS(w.req, m)
	return w.ResponseWriter.WriteMsg(m)
}

// setReplyEDNS gives m, a reply to req, the OPT record ednsWriter says.
func setReplyEDNS(req, m *dns.Msg) {
	var own *dns.OPT
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if o, ok := rr.(*dns.OPT); ok {
			if own == nil {
				own = o
			}
			continue
		}
		extra = append(extra, rr)
	}
	m.Extra = extra
	if req.IsEdns0() == nil {
		return
	}
	if own == nil {
		own = &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
	}
	own.Hdr.Name = "."
	own.SetVersion(0)
	own.SetUDPSize(ednsUDPSize)
	m.Extra = append(m.Extra, own)
}

func (s *Server) soa() dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: s.zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns: "ns." + s.zone, Mbox: "hostmaster." + s.zone, Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: ttl}
}

func (s *Server) answerZone(m, req *dns.Msg, name string, q dns.Question) {
	m.SetReply(req)
	m.Authoritative = true
	var ip net.IP
	found := false
	if name == s.zone {
		ip, found = s.cfg.Self, true
	} else {
		label := strings.TrimSuffix(name, "."+s.zone)
		s.mu.RLock()
		ip, found = s.byName[label]
		s.mu.RUnlock()
	}
	if !found {
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{s.soa()}
		return
	}
	switch {
	case (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY) && ip != nil:
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: ip.To4()}}
	case q.Qtype == dns.TypeSOA && name == s.zone:
		m.Answer = []dns.RR{s.soa()}
	default:
		m.Ns = []dns.RR{s.soa()} // the name exists, not with this type
	}
}

// inReverse reports whether name is a PTR name for an address in the subnet.
func (s *Server) inReverse(name string) bool {
	if s.cfg.Subnet == nil || !strings.HasSuffix(name, ".in-addr.arpa.") {
		return false
	}
	ip := reverseIP(name)
	return ip != nil && s.cfg.Subnet.Contains(ip)
}

func reverseIP(name string) net.IP {
	parts := strings.Split(strings.TrimSuffix(name, ".in-addr.arpa."), ".")
	if len(parts) != 4 {
		return nil
	}
	return net.ParseIP(parts[3] + "." + parts[2] + "." + parts[1] + "." + parts[0])
}

func (s *Server) answerPTR(m, req *dns.Msg, name string, q dns.Question) {
	m.SetReply(req)
	m.Authoritative = true
	ip := reverseIP(name)
	s.mu.RLock()
	vm, ok := s.byIP[ip.String()]
	s.mu.RUnlock()
	if !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{s.soa()}
		return
	}
	if q.Qtype == dns.TypePTR || q.Qtype == dns.TypeANY {
		m.Answer = []dns.RR{&dns.PTR{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: ttl}, Ptr: vm + "." + s.zone}}
	}
}

// mayRecurse: only guests (and the host through the bridge) may use the
// server as a resolver for other names.
func (s *Server) mayRecurse(addr net.Addr) bool {
	var ip net.IP
	switch a := addr.(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.TCPAddr:
		ip = a.IP
	}
	if ip == nil {
		return false
	}
	if s.cfg.Subnet != nil && s.cfg.Subnet.Contains(ip) {
		return true
	}
	for _, n := range s.cfg.AllowRecurs {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// forward asks the upstreams in turn, holding one of the MaxForwards
// slots; with none free (or mayForward false) the client gets SERVFAIL
// at once, as it would from an upstream that does not answer.
func (s *Server) forward(w dns.ResponseWriter, req *dns.Msg, mayForward bool) {
	if !s.mayRecurse(w.RemoteAddr()) {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeRefused)
		_ = w.WriteMsg(m)
		return
	}
	if len(s.cfg.Upstreams) > 0 && mayForward && s.takeForward() {
		defer s.doneForward()
		network := "udp"
		if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
			network = "tcp"
		}
		for _, up := range s.cfg.Upstreams {
			resp, err := s.exchange(network, req, up)
			if err == nil && resp != nil {
				resp.Id = req.Id
				_ = w.WriteMsg(resp)
				return
			}
			s.cfg.Logger.Debug("dns upstream failed", "upstream", up, "err", err)
		}
	}
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	m.RecursionAvailable = true
	_ = w.WriteMsg(m)
}

// exchange is one query to one upstream, within ForwardTimeout; Close
// ends it at once.
func (s *Server) exchange(network string, req *dns.Msg, up string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ForwardTimeout)
	defer cancel()
	c := *s.client
	c.Net = network
	conn, err := c.DialContext(ctx, up)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// miekg's exchange keeps to the deadline, not to ctx: wake its read.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(ctx, req, conn)
	return resp, err
}

// HostUpstreams reads the nameservers of a resolv.conf, leaving out the
// addresses in skip (the server itself, so it never forwards to itself).
func HostUpstreams(path string, skip ...net.IP) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		ip := net.ParseIP(strings.Split(f[1], "%")[0])
		if ip == nil {
			continue
		}
		self := false
		for _, s := range skip {
			self = self || s.Equal(ip)
		}
		if !self {
			out = append(out, net.JoinHostPort(ip.String(), "53"))
		}
	}
	return out
}

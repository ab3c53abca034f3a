package daemon

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/emberhq/ember/internal/wire"
)

// daemonMetrics is what /metrics serves (Prometheus text format, behind
// the web token). Counters and histograms are fed where the work ends
// (opService.persist, bootStarting); gauges are read at scrape time from
// the state that owns them (the store, the session registry, the DNS
// server), so they cannot drift. Its own registry, not the global one:
// a second daemon in the same process (tests) registers its own.
type daemonMetrics struct {
	reg *prometheus.Registry
	// createSeconds: a create operation from its start to the guest
	// answering; bootSeconds: a boot (create or start) from the
	// hypervisor's start to the guest answering.
	createSeconds prometheus.Histogram
	bootSeconds   prometheus.Histogram
	// ops counts finished operations by kind and state.
	ops *prometheus.CounterVec
	// agentConns counts the SSH connections made to guest agents, by why
	// (agentConnBoot, agentConnRestore, agentConnRedial): each is a
	// handshake in the guest, the dearest step of a TCG guest's first
	// exec, so a redial the pool should have spared shows here.
	agentConns *prometheus.CounterVec
}

// Why an agent connection was made (daemonMetrics.agentConns).
const (
	agentConnBoot    = "boot"    // the first contact of a boot (bootVM)
	agentConnRestore = "restore" // the first contact of a restore (bootVM)
	agentConnRedial  = "redial"  // a running VM whose pool had none (vmService.guest)
)

// vmBuckets span a KVM boot (0.1 s) to a loaded TCG one (a minute).
var vmBuckets = []float64{0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120}

func newDaemonMetrics() *daemonMetrics {
	m := &daemonMetrics{
		reg: prometheus.NewRegistry(),
		createSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ember_vm_create_duration_seconds",
			Help: "Time from a VM create request to its guest answering, for creates that succeeded.", Buckets: vmBuckets}),
		bootSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ember_vm_boot_duration_seconds",
			Help: "Time from starting a VM's hypervisor process to its guest answering (create and start).", Buckets: vmBuckets}),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ember_operations_total",
			Help: "Finished operations by kind and outcome (succeeded, failed, cancelled)."}, []string{"kind", "state"}),
		agentConns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ember_agent_connections_total",
			Help: "SSH connections made to guest agents, by why: a boot's or a restore's first contact, or a redial of a running VM."}, []string{"why"}),
	}
	for _, why := range []string{agentConnBoot, agentConnRestore, agentConnRedial} {
		m.agentConns.WithLabelValues(why) // reported from zero
	}
	m.reg.MustRegister(m.createSeconds, m.bootSeconds, m.ops, m.agentConns,
		// The daemon's RSS, descriptors and CPU; its goroutines and heap.
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return m
}

// watch adds the gauges read from the daemon's state at scrape time.
func (m *daemonMetrics) watch(d *Daemon) {
	m.reg.MustRegister(&stateCollector{d: d})
}

// finished counts an operation that ended; a create's whole time goes to
// the create histogram.
func (m *daemonMetrics) finished(o wire.Operation) {
	if !o.Done() {
		return
	}
	m.ops.WithLabelValues(o.Kind, o.State).Inc()
	if o.Kind == wire.VMCreate.Name && o.State == wire.OpSucceeded && o.FinishedAt != nil {
		m.createSeconds.Observe(o.FinishedAt.Sub(o.CreatedAt).Seconds())
	}
}

func (m *daemonMetrics) booted(d time.Duration) { m.bootSeconds.Observe(d.Seconds()) }

// agentConnected counts a connection made to a guest agent; m may be nil.
func (m *daemonMetrics) agentConnected(why string) {
	if m != nil {
		m.agentConns.WithLabelValues(why).Inc()
	}
}

func (m *daemonMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{MaxRequestsInFlight: 4, Timeout: 30 * time.Second})
}

var (
	vmsDesc  = prometheus.NewDesc("ember_vms", "VMs by state.", []string{"state"}, nil)
	sessDesc = prometheus.NewDesc("ember_sessions",
		"Persistent sessions the daemon has a controller for (in use since it started).", nil, nil)
	clientsDesc = prometheus.NewDesc("ember_session_clients", "Clients attached to sessions (terminals, readers).", nil, nil)
	dnsDesc     = prometheus.NewDesc("ember_dns_queries_total", "DNS queries the VM DNS server answered (tap networking).", nil, nil)
	standbyDesc = prometheus.NewDesc("ember_standby_vms", "VMs restored in advance from a snapshot, ready for a create to claim (standby_vms).", nil, nil)
)

// vmStates are reported even when no VM is in them, so a graph of each
// starts at zero.
var vmStates = []string{wire.StateCreating, wire.StateStarting, wire.StateRunning, wire.StatePaused,
	wire.StateStopping, wire.StateStopped, wire.StateDeleting, wire.StateError}

// stateCollector reads the gauges from the state that owns them.
type stateCollector struct{ d *Daemon }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- vmsDesc
	ch <- sessDesc
	ch <- clientsDesc
	ch <- dnsDesc
	ch <- standbyDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(c.d.base, 10*time.Second)
	defer cancel()
	counts := map[string]int{}
	for _, s := range vmStates {
		counts[s] = 0
	}
	if vms, err := c.d.store.ListVMs(ctx); err == nil {
		for _, vm := range vms {
			counts[vm.State]++
		}
		for s, n := range counts {
			ch <- prometheus.MustNewConstMetric(vmsDesc, prometheus.GaugeValue, float64(n), s)
		}
	} else {
		ch <- prometheus.NewInvalidMetric(vmsDesc, err)
	}
	sessions, clients := c.d.sessions.registry.counts()
	ch <- prometheus.MustNewConstMetric(sessDesc, prometheus.GaugeValue, float64(sessions))
	ch <- prometheus.MustNewConstMetric(clientsDesc, prometheus.GaugeValue, float64(clients))
	var q uint64
	if c.d.nets.tap != nil && c.d.nets.tap.dns != nil {
		q = c.d.nets.tap.dns.Queries()
	}
	ch <- prometheus.MustNewConstMetric(dnsDesc, prometheus.CounterValue, float64(q))
	ch <- prometheus.MustNewConstMetric(standbyDesc, prometheus.GaugeValue, float64(c.d.vms.standbys.size()))
}

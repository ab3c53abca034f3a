package netconf

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
)

// TapPool keeps TAP interfaces created ahead of need, attached to the
// bridge, so a create does not wait for netlink. Names are prefix+N. It
// owns its lock; netlink calls happen outside it.
type TapPool struct {
	bridge, prefix string
	warm           int
	log            *slog.Logger

	// mu guards the fields below.
	mu      sync.Mutex
	free    []string
	inUse   map[string]bool
	next    int
	closed  bool
	filling bool
	wg      sync.WaitGroup
}

// NewTapPool makes an empty pool; Reconcile fills it.
func NewTapPool(bridge, prefix string, warm int, log *slog.Logger) *TapPool {
	if log == nil {
		log = slog.Default()
	}
	return &TapPool{bridge: bridge, prefix: prefix, warm: warm, log: log, inUse: map[string]bool{}}
}

// Reconcile adopts the TAPs that already exist with the pool's prefix (a
// crashed or restarted daemon's): those in inUse stay with their VMs, the
// rest become free up to twice the warm size, and surplus ones are deleted. Then
// it fills the pool to the warm size.
func (p *TapPool) Reconcile(inUse []string) error {
	existing, err := p.existing()
	if err != nil {
		return err
	}
	used := map[string]bool{}
	for _, n := range inUse {
		if n != "" {
			used[n] = true
		}
	}
	var free, surplus []string
	maxN := -1
	for _, n := range existing {
		if i, err := strconv.Atoi(strings.TrimPrefix(n, p.prefix)); err == nil && i > maxN {
			maxN = i
		}
		if used[n] {
			continue
		}
		if len(free) < p.maxFree() {
			free = append(free, n)
		} else {
			surplus = append(surplus, n)
		}
	}
	for _, n := range surplus {
		if err := DeleteLink(n); err != nil {
			p.log.Warn("delete surplus tap", "tap", n, "err", err)
		}
	}
	for _, n := range free {
		// Re-attach and bring up: a half-made one may lack either.
		if err := p.attach(n); err != nil {
			return err
		}
	}
	p.mu.Lock()
	p.free = free
	p.inUse = used
	p.next = maxN + 1
	p.mu.Unlock()
	// Missing in-use TAPs (deleted by hand) are recreated so QEMU can open them.
	for n := range used {
		if !contains(existing, n) {
			if err := p.create(n); err != nil {
				return err
			}
		}
	}
	return p.fill()
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// existing lists the tuntap links whose name is prefix+digits.
func (p *TapPool) existing() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []string
	for _, l := range links {
		n := l.Attrs().Name
		if !strings.HasPrefix(n, p.prefix) || l.Type() != "tuntap" {
			continue
		}
		if _, err := strconv.Atoi(strings.TrimPrefix(n, p.prefix)); err == nil {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

// fill creates TAPs until the pool holds its warm size.
func (p *TapPool) fill() error {
	for {
		p.mu.Lock()
		if p.closed || len(p.free) >= p.warm {
			p.mu.Unlock()
			return nil
		}
		name := p.newNameLocked()
		p.mu.Unlock()
		if err := p.create(name); err != nil {
			return err
		}
		p.mu.Lock()
		p.free = append(p.free, name)
		p.mu.Unlock()
	}
}

func (p *TapPool) maxFree() int { return 2 * p.warm }

func (p *TapPool) newNameLocked() string {
	n := p.prefix + strconv.Itoa(p.next)
	p.next++
	return n
}

// create makes a persistent TAP attached to the bridge and up.
func (p *TapPool) create(name string) error {
	br, err := netlink.LinkByName(p.bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", p.bridge, err)
	}
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name, MasterIndex: br.Attrs().Index},
		Mode: netlink.TUNTAP_MODE_TAP}
	if err := netlink.LinkAdd(tap); err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return fmt.Errorf("bring up tap %s: %w", name, err)
	}
	return nil
}

func (p *TapPool) attach(name string) error { return attachTAP(&netlink.Handle{}, name, p.bridge) }

// attachTAP puts the TAP name on bridge and brings it up, through h (the
// zero Handle works in the calling thread's namespace).
func attachTAP(h *netlink.Handle, name, bridge string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find tap %s: %w", name, err)
	}
	br, err := h.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", bridge, err)
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := h.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("attach %s to %s: %w", name, bridge, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up tap %s: %w", name, err)
	}
	return nil
}

// Take hands out a TAP: a warm one if there is one, else a new one made
// now. The pool refills in the background.
func (p *TapPool) Take() (string, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return "", errors.New("tap pool is closed")
	}
	var name string
	warm := len(p.free) > 0
	if warm {
		name = p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
	} else {
		name = p.newNameLocked()
	}
	p.inUse[name] = true
	p.refillLocked()
	p.mu.Unlock()
	if !warm {
		if err := p.create(name); err != nil {
			p.mu.Lock()
			delete(p.inUse, name)
			p.mu.Unlock()
			return "", err
		}
	}
	return name, nil
}

// refillLocked starts one background fill unless one runs.
func (p *TapPool) refillLocked() {
	if p.filling || p.closed || len(p.free) >= p.warm {
		return
	}
	p.filling = true
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := p.fill(); err != nil {
			p.log.Warn("refill tap pool", "err", err)
		}
		p.mu.Lock()
		p.filling = false
		p.mu.Unlock()
	}()
}

// Put gives a TAP back to the pool. The pool keeps up to twice its warm
// size (a burst of deletes followed by creates reuses them); beyond that
// the TAP is deleted.
func (p *TapPool) Put(name string) {
	if name == "" {
		return
	}
	p.mu.Lock()
	delete(p.inUse, name)
	keep := !p.closed && len(p.free) < p.maxFree() && !contains(p.free, name)
	if keep {
		p.free = append(p.free, name)
	}
	p.mu.Unlock()
	if !keep {
		if err := DeleteLink(name); err != nil {
			p.log.Warn("delete tap", "tap", name, "err", err)
		}
	}
}

// Stats reports the free and in-use TAP names.
func (p *TapPool) Stats() (free, inUse []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	free = append(free, p.free...)
	for n := range p.inUse {
		inUse = append(inUse, n)
	}
	sort.Strings(inUse)
	return free, inUse
}

// Close stops refilling. TAPs stay: a restarted daemon adopts them.
func (p *TapPool) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.wg.Wait()
}

// DeleteAll removes every TAP with the prefix (ember daemon --cleanup).
func DeleteAll(prefix string) (int, error) {
	p := &TapPool{prefix: prefix}
	names, err := p.existing()
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, n := range names {
		errs = append(errs, DeleteLink(n))
	}
	return len(names), errors.Join(errs...)
}

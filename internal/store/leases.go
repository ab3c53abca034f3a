package store

import (
	"context"
	"fmt"
	"time"
)

// Lease is a tap-mode VM's guest address (see migrations/0002_leases.sql).
type Lease struct {
	IP        string // dotted IPv4 address
	VMID      string
	MAC       string
	TAP       string // host TAP interface; "" until one is attached
	CreatedAt time.Time
}

const leaseColumns = `ip, vm_id, mac, tap, created_at`

func scanLease(row scanner) (Lease, error) {
	var l Lease
	var created int64
	if err := row.Scan(&l.IP, &l.VMID, &l.MAC, &l.TAP, &created); err != nil {
		return Lease{}, err
	}
	l.CreatedAt = fromNanos(created)
	return l, nil
}

// InsertLease records a lease. An address or VM that already has one is
// ErrConflict; a VM that does not exist is an error (foreign key).
func (o *ops) InsertLease(ctx context.Context, l Lease) error {
	l.CreatedAt = orNow(l.CreatedAt, o.now())
	_, err := o.w.ExecContext(ctx, `INSERT INTO leases (`+leaseColumns+`) VALUES (?,?,?,?,?)`,
		l.IP, l.VMID, l.MAC, l.TAP, toNanos(l.CreatedAt))
	if isConstraint(err) {
		return fmt.Errorf("lease %s for vm %s: address or vm already leased: %w", l.IP, l.VMID, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("insert lease %s for vm %s: %w", l.IP, l.VMID, err)
	}
	return nil
}

// ListLeases returns every lease ordered by address text.
func (o *ops) ListLeases(ctx context.Context) ([]Lease, error) {
	return queryAll(ctx, o.r, "leases", scanLease, `SELECT `+leaseColumns+` FROM leases ORDER BY ip`)
}

// GetLeaseByVM returns the lease of a VM; none is ErrNotFound.
func (o *ops) GetLeaseByVM(ctx context.Context, vmID string) (Lease, error) {
	return queryOne(ctx, o.r, fmt.Sprintf("lease of vm %s", vmID), scanLease,
		`SELECT `+leaseColumns+` FROM leases WHERE vm_id = ?`, vmID)
}

// SetLeaseTAP records the TAP interface a VM holds; unknown VM is ErrNotFound.
func (o *ops) SetLeaseTAP(ctx context.Context, vmID, tap string) error {
	return execOne(ctx, o.w, fmt.Sprintf("set tap of vm %s", vmID), `UPDATE leases SET tap = ? WHERE vm_id = ?`, tap, vmID)
}

// DeleteLease frees a VM's address; a VM with no lease is ErrNotFound.
// Deleting the VM row frees it too (cascade).
func (o *ops) DeleteLease(ctx context.Context, vmID string) error {
	return execOne(ctx, o.w, fmt.Sprintf("delete lease of vm %s", vmID), `DELETE FROM leases WHERE vm_id = ?`, vmID)
}

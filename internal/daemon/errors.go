package daemon

import (
	"context"
	"errors"
	"os"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/events"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/hosttools"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/image"
	"github.com/emberhq/ember/internal/ipam"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/oci"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/treecopy"
	"github.com/emberhq/ember/internal/wire"
)

// wireCodes is the one table from sentinel errors to wire codes. Packages
// wrap their sentinels with context (fmt.Errorf("vm %q: %w", name,
// store.ErrConflict)) and leave the code to this table; the daemon's own
// checks say their code directly with invalidf, notFoundf and conflictf.
// The first entry errors.Is matches wins; an error that matches none is
// internal. errors_test.go fails when a package exports an Err* variable
// that is neither here nor in internalErrors.
var wireCodes = []struct {
	err  error
	code string
}{
	{store.ErrNotFound, wire.CodeNotFound},
	{kernel.ErrNotFound, wire.CodeNotFound},
	// A kernel or modules folder past the import's bounds: the request
	// has to change.
	{kernel.ErrTooLarge, wire.CodeInvalid},
	{store.ErrConflict, wire.CodeConflict},
	// An image import: a reference the registry does not have; a file
	// that holds no image, or an image past the import's bounds.
	{oci.ErrUnknownRef, wire.CodeNotFound},
	{oci.ErrNotImage, wire.CodeInvalid},
	{oci.ErrTooLarge, wire.CodeInvalid},
	// The subnet is full: another VM holds what this one needs.
	{ipam.ErrExhausted, wire.CodeConflict},
	// Another process holds a host port the VM forwards. The daemon picks
	// its SSH ports and retries; this reaches a client only when retries
	// ran out (or, later, for a port the user asked for).
	{hypervisor.ErrPortInUse, wire.CodeConflict},
	// What answers on a VM's agent address does not hold the host key the
	// agent announced at boot: the VM's state is not what the daemon
	// recorded, and a restart (a fresh boot and key) resolves it.
	{guest.ErrHostKeyMismatch, wire.CodeConflict},
	// The agent's channel ended without the command's exit status: the
	// VM went away under it (exec.go's whyLost says how when it can).
	{guest.ErrLost, wire.CodeGone},
	// A promote's copy outlasted the guest's freeze, which the agent
	// ended by itself: trying again (on a less busy host) may work.
	{guest.ErrFreezeExpired, wire.CodeTimeout},
	// The driver cannot do what the request asks (a network mode, say):
	// the request has to change, not the host.
	{hypervisor.ErrUnsupported, wire.CodeInvalid},
	// A home or runtime folder too deep for a VM's control socket: the
	// layout has to change (Open refuses such a layout already).
	{hypervisor.ErrSocketPathTooLong, wire.CodeInvalid},
	// A kernel without the modules the guest needs: another kernel (or
	// its modules folder) has to be given.
	{kernel.ErrMissingModules, wire.CodeInvalid},
	// A copy's stream or tree that treecopy refuses: a hostile or broken
	// name, a symlink in the way, a bound passed.
	{treecopy.ErrInvalid, wire.CodeInvalid},
	// An events stream resumed past the newest event (a seq no daemon
	// gave); one ended because the daemon closes, which its client
	// resumes from the next daemon.
	{events.ErrAhead, wire.CodeInvalid},
	{events.ErrClosed, wire.CodeCancelled},
	{context.Canceled, wire.CodeCancelled},
	// A boot past boot_timeout, an agent that does not answer in time: not
	// a bug (internal) and not asked for (cancelled); trying again, or with
	// a longer timeout, may work.
	{context.DeadlineExceeded, wire.CodeTimeout},
	{os.ErrDeadlineExceeded, wire.CodeTimeout}, // a net.Conn deadline
}

// internalErrors are exported sentinels that stay internal on purpose,
// each with the reason. Listing them here, next to the table, makes that a
// decision rather than an omission.
var internalErrors = []struct {
	err error
	why string
}{
	{hosttools.ErrNotFound, "a host program is missing: the host must change, not the request; not_found would read as the named vm or image missing, and the message says what to install"},
	{client.ErrNoDaemon, "client side: the client could not reach a daemon, so no daemon answer carries it"},
	{client.ErrPermission, "client side: the socket refused the client, so no daemon answer carries it"},
	{guest.ErrDetached, "never an error on the wire: the daemon ends a detached exec with an Exit frame that says so"},
	{guest.ErrOldAgent, "never an error on the wire: a guest clock that could not be set after a resume or a snapshot's save is only logged (setGuestClock)"},
	{image.ErrNotInImage, "never an error on the wire: a register whose image has no modules folder keeps its kernel bare and says so in a remark (importOwnKernel)"},
}

// toWireError is the one place where errors become wire codes.
func toWireError(err error) *wire.Error {
	if err == nil {
		return nil
	}
	var we *wire.Error
	if errors.As(err, &we) {
		// Keep the context added around the typed error.
		return &wire.Error{Code: we.Code, Message: err.Error()}
	}
	return &wire.Error{Code: codeOf(err), Message: err.Error()}
}

// codeOf looks err up in wireCodes.
func codeOf(err error) string {
	for _, c := range wireCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return wire.CodeInternal
}

func invalidf(format string, args ...any) error {
	return wire.Errorf(wire.CodeInvalid, format, args...)
}
func notFoundf(format string, args ...any) error {
	return wire.Errorf(wire.CodeNotFound, format, args...)
}
func conflictf(format string, args ...any) error {
	return wire.Errorf(wire.CodeConflict, format, args...)
}

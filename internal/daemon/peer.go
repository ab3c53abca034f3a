package daemon

import (
	"context"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// peerKey is the context key of the client's credentials (peerCred).
type peerKey struct{}

// peerCred is who sent a request, as the kernel says (SO_PEERCRED on the
// unix socket); known is false when no kernel said (a test calling a
// handler directly, another transport).
type peerCred struct {
	uid   uint32
	known bool
}

// withPeer records c's peer credentials in ctx.
func withPeer(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, peerCred{uid: cred.Uid, known: true})
}

// peerOf is the credentials withPeer recorded.
func peerOf(ctx context.Context) peerCred {
	p, _ := ctx.Value(peerKey{}).(peerCred)
	return p
}

// trustedPeer says whether the client may have the daemon use its own
// rights for it: read host folders it names (`--cap copy`, `--cap
// mount`) or bind a privileged host port (`--cap port` below 1024). Only
// root and the daemon's own user are, who can do whatever the daemon does. A root
// daemon's socket also admits the members of its group; they use `ember
// cp`, whose CLI reads the host side with their own rights. A request
// with no kernel-given credentials is refused too.
func trustedPeer(ctx context.Context) bool {
	p := peerOf(ctx)
	return p.known && (p.uid == 0 || p.uid == uint32(os.Geteuid()))
}

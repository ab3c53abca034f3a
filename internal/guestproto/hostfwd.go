package guestproto

// host.ember.internal: a guest reaches the host ports its user opened for
// it (`--cap hostport=...`, `ember port add --to-host`) at a fixed name,
// whatever its network (user mode or tap). The agent puts HostAddr on the
// guest's loopback interface at boot and names it HostName in
// /etc/hosts; nothing listens there until the daemon asks. The daemon asks
// with the standard SSH reverse forward (RFC 4254 section 7.1,
// GlobalTCPIPForward, the request `ssh -R` sends) on its own agent
// connection, for HostAddr and one port at a time; the agent listens
// there and hands each connection a guest process makes back to the
// daemon as a ChannelForwardedTCPIP channel, and the daemon connects it
// to the host port the user named. The guest never names a host address
// or port: it can only connect to what the daemon asked it to listen on.
const (
	// HostName is the name guests use for the host.
	HostName = "host.ember.internal"
	// HostAddr is the guest-side address HostName resolves to: a
	// link-local address (RFC 3927, outside the first and last /24
	// it reserves) that no network ember sets up uses, held on the
	// guest's own loopback, so connections to it never leave the guest.
	HostAddr = "169.254.1.1"

	// GlobalTCPIPForward asks the agent to listen on HostAddr:port;
	// GlobalCancelTCPIPForward to stop (RFC 4254 section 7.1).
	GlobalTCPIPForward       = "tcpip-forward"
	GlobalCancelTCPIPForward = "cancel-tcpip-forward"
	// ChannelForwardedTCPIP carries one connection a guest process made
	// to a forwarded port, agent to daemon (RFC 4254 section 7.2).
	ChannelForwardedTCPIP = "forwarded-tcpip"

	// MaxHostForwards bounds the ports the agent listens on for one
	// connection; MaxHostForwardConns the connections one of them hands
	// over at once (more wait in the listen backlog).
	MaxHostForwards     = 256
	MaxHostForwardConns = 128
)

// TCPIPForward is the payload of GlobalTCPIPForward and
// GlobalCancelTCPIPForward.
type TCPIPForward struct {
	Addr string
	Port uint32
}

// ForwardedTCPIP is the payload of a ChannelForwardedTCPIP open: the
// address and port that were asked for, and the guest process's end.
type ForwardedTCPIP struct {
	Addr       string
	Port       uint32
	OriginAddr string
	OriginPort uint32
}

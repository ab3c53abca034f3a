package guestproto

// User is the account the daemon logs in as and the agent runs everything
// as.
const User = "root"

// DefaultPort is the SSH port the agent listens on when ember.port is
// absent.
const DefaultPort = 22

// SSH channel types the agent accepts.
const (
	ChannelSession     = "session"      // RFC 4254 section 6
	ChannelDirectTCPIP = "direct-tcpip" // RFC 4254 section 7.2
	SessionChannelType = "ember-session"
)

// SSH request types on a session channel (RFC 4254 section 6), and on a
// SessionChannelType channel: ReqWindowChange from the client, ReqExitStatus
// from the agent.
const (
	ReqEnv          = "env"
	ReqPTY          = "pty-req"
	ReqWindowChange = "window-change"
	ReqSignal       = "signal"
	ReqExec         = "exec"
	ReqShell        = "shell"
	ReqSubsystem    = "subsystem"
	ReqExitStatus   = "exit-status"
	// ReqDetach (ember's own, on an exec channel with a PTY) leaves the
	// command running when the channel closes: its output is discarded
	// from then on, as `docker exec -it`'s detach keys do.
	ReqDetach = "ember-detach@emberhq"
)

// SubsystemSFTP is the one subsystem the agent serves.
const SubsystemSFTP = "sftp"

package wire

// The method table: every request the daemon answers, with its parameter
// and result types and whether it streams. The daemon registers one handler
// per entry (a test checks none is missing or extra), the client calls them
// through typed functions, and nothing else spells a method name.
//
// Adding a method: add its entry here and to Methods, then register its
// handler in the service that owns the state it touches.

// None is the parameter or result of a method that takes or returns nothing.
type None struct{}

// Method is a request answered with one JSON result of type R.
type Method[P, R any] struct{ Name string }

// StreamMethod is a request that switches the connection to frames
// (frame.go) after a first response; it ends with a FrameExit.
type StreamMethod[P any] struct{ Name string }

// MethodInfo describes an entry of the table for code that handles methods
// generically (dispatch, the web listener, tests).
type MethodInfo struct {
	Name   string
	Stream bool
}

func (m Method[P, R]) Info() MethodInfo    { return MethodInfo{Name: m.Name} }
func (m StreamMethod[P]) Info() MethodInfo { return MethodInfo{Name: m.Name, Stream: true} }

// The methods.
var (
	DaemonInfoMethod = Method[None, DaemonInfo]{"daemon.info"}
	DaemonWeb        = Method[None, WebInfo]{"daemon.web"} // the dashboard's URL with its token (web.go)

	VMCreate  = Method[CreateVMParams, Operation]{"vm.create"}
	VMList    = Method[None, []VM]{"vm.list"}
	VMInspect = Method[RefParams, VM]{"vm.inspect"}
	VMStart   = Method[RefParams, VM]{"vm.start"}
	VMStop    = Method[RefParams, VM]{"vm.stop"}
	VMRestart = Method[RefParams, VM]{"vm.restart"}
	VMDelete  = Method[RefParams, VM]{"vm.delete"}
	VMPause   = Method[RefParams, VM]{"vm.pause"}  // its vCPUs stop; exec says paused (pause.go)
	VMResume  = Method[RefParams, VM]{"vm.resume"} // a paused VM runs again
	VMExec    = StreamMethod[ExecParams]{"vm.exec"}
	VMLogs    = StreamMethod[LogsParams]{"vm.logs"}
	VMCopyIn  = StreamMethod[CopyInParams]{"vm.copy_in"}   // files as a tar stream (copy.go)
	VMCopyOut = StreamMethod[CopyOutParams]{"vm.copy_out"} // files as a tar stream (copy.go)

	OpList   = Method[None, []Operation]{"op.list"}
	OpStatus = Method[OpParams, Operation]{"op.status"}
	OpWait   = StreamMethod[OpParams]{"op.wait"}
	OpCancel = Method[OpParams, None]{"op.cancel"}
	OpPrune  = Method[None, map[string]int]{"op.prune"}

	ImageList     = Method[None, []Image]{"image.list"}
	ImageInspect  = Method[RefParams, Image]{"image.inspect"}
	ImageImport   = StreamMethod[ImageImportParams]{"image.import"} // an archive passes as a descriptor (imageimport.go)
	ImagePromote  = Method[ImagePromoteParams, Image]{"image.promote"}
	ImageBuild    = StreamMethod[ImageBuildParams]{"image.build"}       // context as a tar stream (imagebuild.go)
	ImageRegister = StreamMethod[ImageRegisterParams]{"image.register"} // the file passes as a descriptor (imagemanage.go)
	ImageRemove   = Method[ImageRemoveParams, None]{"image.remove"}

	KernelList    = Method[None, []Kernel]{"kernel.list"}
	KernelFetch   = StreamMethod[KernelFetchParams]{"kernel.fetch"}
	KernelImport  = StreamMethod[KernelImportParams]{"kernel.import"} // files pass as descriptors (kernelimport.go)
	KernelDefault = Method[KernelDefaultParams, Kernel]{"kernel.default"}

	SessionList   = Method[SessionParams, []Session]{"session.list"}
	SessionCreate = Method[SessionCreateParams, Session]{"session.create"}
	SessionAttach = StreamMethod[SessionAttachParams]{"session.attach"}
	SessionSend   = Method[SessionSendParams, None]{"session.send"}
	SessionRead   = StreamMethod[SessionReadParams]{"session.read"}
	SessionKill   = Method[SessionParams, None]{"session.kill"}
	SessionSignal = Method[SessionSignalParams, None]{"session.signal"}
	SessionRun    = StreamMethod[SessionRunParams]{"session.run"}
	SessionWait   = StreamMethod[SessionWaitParams]{"session.wait"}

	SnapshotCreate  = Method[SnapshotParams, Snapshot]{"snapshot.create"} // a VM's memory and disk at one moment (snapshot.go)
	SnapshotList    = Method[SnapshotListParams, []Snapshot]{"snapshot.list"}
	SnapshotInspect = Method[RefParams, Snapshot]{"snapshot.inspect"}
	SnapshotRemove  = Method[SnapshotParams, None]{"snapshot.remove"}
	VMRestore       = Method[SnapshotParams, VM]{"vm.restore"} // a VM put back to a snapshot

	PortAdd    = Method[PortParams, Port]{"port.add"}
	PortRemove = Method[PortParams, None]{"port.remove"}
	PortList   = Method[RefParams, []Port]{"port.list"}

	// Events streams lifecycle events, one wire.Event per frame (events.go).
	Events = StreamMethod[EventsParams]{"event.follow"}
)

// VMSSHProxy carries an OpenSSH client's bytes to the VM agent's SSH port
// (ssh.go).
var VMSSHProxy = StreamMethod[RefParams]{"vm.ssh_proxy"}

// Methods lists the table, in the order above.
var Methods = []MethodInfo{
	DaemonInfoMethod.Info(), DaemonWeb.Info(),
	VMCreate.Info(), VMList.Info(), VMInspect.Info(), VMStart.Info(), VMStop.Info(),
	VMRestart.Info(), VMDelete.Info(), VMExec.Info(), VMLogs.Info(),
	VMCopyIn.Info(), VMCopyOut.Info(), VMPause.Info(), VMResume.Info(),
	OpList.Info(), OpStatus.Info(), OpWait.Info(), OpCancel.Info(), OpPrune.Info(),
	ImageList.Info(), ImageInspect.Info(), ImageImport.Info(), ImagePromote.Info(), ImageBuild.Info(),
	ImageRegister.Info(), ImageRemove.Info(),
	KernelList.Info(), KernelFetch.Info(), KernelImport.Info(), KernelDefault.Info(),
	SessionList.Info(), SessionCreate.Info(), SessionAttach.Info(), SessionSend.Info(),
	SessionRead.Info(), SessionKill.Info(), SessionSignal.Info(), SessionRun.Info(), SessionWait.Info(),
	PortAdd.Info(), PortRemove.Info(), PortList.Info(),
	SnapshotCreate.Info(), SnapshotList.Info(), SnapshotInspect.Info(), SnapshotRemove.Info(), VMRestore.Info(),
	Events.Info(),
	VMSSHProxy.Info(),
}

// IsStream reports whether the named method streams; unknown names do not.
func IsStream(name string) bool {
	for _, m := range Methods {
		if m.Name == name {
			return m.Stream
		}
	}
	return false
}

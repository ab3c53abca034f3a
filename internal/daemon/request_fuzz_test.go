package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"testing"

	"github.com/emberhq/ember/internal/wire"
)

// paramDecoder decodes one method's params as its handler does
// (decodeParams: JSON, then the params type's own checks).
type paramDecoder func(raw json.RawMessage) error

func unary[P, R any](m wire.Method[P, R]) (string, paramDecoder) {
	return m.Name, func(raw json.RawMessage) error { _, err := decodeParams[P](m.Name, raw); return err }
}

func stream[P any](m wire.StreamMethod[P]) (string, paramDecoder) {
	return m.Name, func(raw json.RawMessage) error { _, err := decodeParams[P](m.Name, raw); return err }
}

// paramDecoders has the decoder of every method of wire's table
// (TestParamDecodersCoverTheTable keeps it whole).
func paramDecoders() map[string]paramDecoder {
	m := map[string]paramDecoder{}
	for _, add := range []func() (string, paramDecoder){
		func() (string, paramDecoder) { return unary(wire.DaemonInfoMethod) },
		func() (string, paramDecoder) { return unary(wire.DaemonWeb) },
		func() (string, paramDecoder) { return unary(wire.VMCreate) },
		func() (string, paramDecoder) { return unary(wire.VMList) },
		func() (string, paramDecoder) { return unary(wire.VMInspect) },
		func() (string, paramDecoder) { return unary(wire.VMStart) },
		func() (string, paramDecoder) { return unary(wire.VMStop) },
		func() (string, paramDecoder) { return unary(wire.VMRestart) },
		func() (string, paramDecoder) { return unary(wire.VMDelete) },
		func() (string, paramDecoder) { return unary(wire.VMPause) },
		func() (string, paramDecoder) { return unary(wire.VMResume) },
		func() (string, paramDecoder) { return unary(wire.SnapshotCreate) },
		func() (string, paramDecoder) { return unary(wire.SnapshotList) },
		func() (string, paramDecoder) { return unary(wire.SnapshotInspect) },
		func() (string, paramDecoder) { return unary(wire.SnapshotRemove) },
		func() (string, paramDecoder) { return unary(wire.VMRestore) },
		func() (string, paramDecoder) { return stream(wire.VMExec) },
		func() (string, paramDecoder) { return stream(wire.VMLogs) },
		func() (string, paramDecoder) { return stream(wire.VMCopyIn) },
		func() (string, paramDecoder) { return stream(wire.VMCopyOut) },
		func() (string, paramDecoder) { return stream(wire.VMSSHProxy) },
		func() (string, paramDecoder) { return unary(wire.OpList) },
		func() (string, paramDecoder) { return unary(wire.OpStatus) },
		func() (string, paramDecoder) { return stream(wire.OpWait) },
		func() (string, paramDecoder) { return unary(wire.OpCancel) },
		func() (string, paramDecoder) { return unary(wire.OpPrune) },
		func() (string, paramDecoder) { return unary(wire.ImageList) },
		func() (string, paramDecoder) { return unary(wire.ImageInspect) },
		func() (string, paramDecoder) { return unary(wire.ImagePromote) },
		func() (string, paramDecoder) { return stream(wire.ImageBuild) },
		func() (string, paramDecoder) { return stream(wire.ImageRegister) },
		func() (string, paramDecoder) { return unary(wire.ImageRemove) },
		func() (string, paramDecoder) { return unary(wire.KernelList) },
		func() (string, paramDecoder) { return stream(wire.KernelFetch) },
		func() (string, paramDecoder) { return stream(wire.KernelImport) },
		func() (string, paramDecoder) { return stream(wire.ImageImport) },
		func() (string, paramDecoder) { return unary(wire.KernelDefault) },
		func() (string, paramDecoder) { return unary(wire.SessionList) },
		func() (string, paramDecoder) { return unary(wire.SessionCreate) },
		func() (string, paramDecoder) { return stream(wire.SessionAttach) },
		func() (string, paramDecoder) { return unary(wire.SessionSend) },
		func() (string, paramDecoder) { return stream(wire.SessionRead) },
		func() (string, paramDecoder) { return unary(wire.SessionKill) },
		func() (string, paramDecoder) { return unary(wire.SessionSignal) },
		func() (string, paramDecoder) { return stream(wire.SessionRun) },
		func() (string, paramDecoder) { return stream(wire.SessionWait) },
		func() (string, paramDecoder) { return unary(wire.PortAdd) },
		func() (string, paramDecoder) { return unary(wire.PortRemove) },
		func() (string, paramDecoder) { return unary(wire.PortList) },
		func() (string, paramDecoder) { return stream(wire.Events) },
	} {
		name, dec := add()
		m[name] = dec
	}
	return m
}

func TestParamDecodersCoverTheTable(t *testing.T) {
	decs := paramDecoders()
	for _, m := range wire.Methods {
		if decs[m.Name] == nil {
			t.Errorf("FuzzRequest has no decoder for %s: add it to paramDecoders", m.Name)
		}
	}
}

// bytesConn is a connection whose client sent b and nothing more.
type bytesConn struct {
	net.Conn
	r *bytes.Reader
}

func (c bytesConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// FuzzRequest feeds client bytes to what the daemon does with them before
// any handler runs: the request line (bounded, JSON) and the method's
// params. Nothing panics; a request is either decoded or refused with
// invalid (or the client's end of input).
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		`{"method":"vm.list"}` + "\n",
		`{"method":"vm.create","params":{"name":"a","cpus":2,"memory_mib":512,"disk_gib":4,"net":"tap"}}` + "\n",
		`{"method":"vm.stop","params":{"ref":"a","force":true,"timeout_seconds":9223372037}}` + "\n",
		`{"method":"vm.exec","params":{"ref":"a","argv":["sh","-c","true"],"tty":true,"rows":-1,"cols":70000}}` + "\n",
		`{"method":"vm.logs","params":{"ref":"a","follow":true,"tail":-5}}` + "\n",
		`{"method":"session.send","params":{"ref":"a","name":"s","text":"ls\r"}}` + "\n" + "\x69\x00\x00\x00\x01a",
		`{"method":"session.attach","params":{"ref":"a","name":"s","rows":24,"cols":80}}` + "\n",
		`{"method":"kernel.import","params":{"name":"k","vmlinuz":"/etc/shadow"}}` + "\n",
		`{"method":"op.wait","params":{"id":"x"}}` + "\n",
		`{"method":"vm.copy_in","params":{"ref":"a","path":"/work","name":"../x"}}` + "\n",
		`{"method":"vm.copy_out","params":{"ref":"a","path":"relative"}}` + "\n",
		`{"method":"vm.ssh_proxy","params":{"ref":"a"}}` + "\n",
		`{"method":"vm.create","params":{"name":"a","ssh_keys":["ssh-ed25519 AAAA"]}}` + "\n",
		`{"method":1}` + "\n",
		"{\"method\":\"vm.list\",\"params\":" + "[[[[[[[[[[[[[[[[[[[[[[[[" + "\n",
		"\n",
		"no newline",
	} {
		f.Add([]byte(s))
	}
	decs := paramDecoders()
	f.Fuzz(func(t *testing.T, b []byte) {
		req, br, err := readRequest(bytesConn{r: bytes.NewReader(b)})
		switch {
		case errors.Is(err, errRequestTooLong):
			if len(b) <= maxRequestLine {
				t.Fatalf("%d bytes refused as too long", len(b))
			}
			return
		case errors.Is(err, io.EOF), errors.Is(err, os.ErrDeadlineExceeded):
			return
		case err != nil:
			if wire.CodeOf(err) != wire.CodeInvalid {
				t.Fatalf("request refused with %v, want invalid", err)
			}
			return
		}
		if br == nil {
			t.Fatal("no reader to go on with")
		}
		dec := decs[req.Method]
		if dec == nil {
			return // dispatch answers invalid: unknown method
		}
		if err := dec(req.Params); err != nil && wire.CodeOf(err) != wire.CodeInvalid {
			t.Fatalf("%s params refused with %v, want invalid", req.Method, err)
		}
	})
}

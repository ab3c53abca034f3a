package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/treecopy"
	"github.com/emberhq/ember/internal/wire"
)

const cpHelp = `Copy files and folders between the host and a VM, as docker cp does.
One side is VM:/PATH (an absolute path in the guest), the other a host path.

A folder is copied with everything under it; modes, symlinks (as symlinks,
never followed) and modification times are kept; files are owned by root
in the guest and by you on the host. When DST is a folder that exists, SRC
goes into it under its own name; otherwise SRC becomes DST, whose folder
must exist. A file already at DST is replaced whole.

The host side is read and written with your rights, never by the daemon.
Nothing outside the trees named is read or written: a symlink under SRC
is copied as a link, and a copy out of a VM refuses to write through a
symlink it meets in DST (a guest's files are not trusted).

SRC - reads a tar archive from stdin into the folder VM:/PATH; DST -
writes VM:/PATH to stdout as a tar archive. A host path that holds a
colon and no slash is written ./NAME.

Exit status: 0 copied; 2 a usage error or a name, link or size the copy
refuses; 3 no such VM or guest path; 4 the VM is not running; 1 otherwise.`

func cpCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files and folders between the host and a VM (VM:/PATH on one side)",
		Long:  cpHelp,
		Example: "  ember cp ./project vm1:/work\n  ember cp vm1:/etc/hostname .\n" +
			"  tar -C dir -c . | ember cp - vm1:/work\n  ember cp vm1:/var/log - | tar -t",
		RunE: func(cmd *cobra.Command, args []string) error {
			srcVM, srcPath, srcIsVM, err := cpArg(args[0])
			if err != nil {
				return usagef(cmd, "SRC: %v", err)
			}
			dstVM, dstPath, dstIsVM, err := cpArg(args[1])
			if err != nil {
				return usagef(cmd, "DST: %v", err)
			}
			switch {
			case srcIsVM && dstIsVM:
				return usagef(cmd, "both SRC and DST are in VMs; copy through the host")
			case !srcIsVM && !dstIsVM:
				return usagef(cmd, "neither SRC nor DST is in a VM: one of them is VM:/PATH")
			case srcIsVM && args[0] == "-", dstIsVM && args[1] == "-":
				return usagef(cmd, "- is a tar stream on the host side")
			}
			err = runCp(cmd.Context(), e, cpJob{srcVM: srcVM, srcPath: srcPath, dstVM: dstVM, dstPath: dstPath, in: dstIsVM})
			if errors.Is(err, treecopy.ErrInvalid) && wire.CodeOf(err) == wire.CodeInternal {
				// Refused on the host side: the same status as the daemon's refusal.
				return &statusError{err: err, code: exitStatuses[wire.CodeInvalid]}
			}
			return err
		},
	}
}

// cpArg splits VM:/PATH; anything else is a host path (or -). A VM's
// name holds no slash, so ./a:b is a host path.
func cpArg(arg string) (vm, p string, isVM bool, err error) {
	if arg == "" {
		return "", "", false, errors.New("an empty path")
	}
	name, rest, found := strings.Cut(arg, ":")
	if !found || strings.Contains(name, "/") {
		return "", arg, false, nil
	}
	if name == "" {
		return "", "", false, fmt.Errorf("%q names no VM before the colon (VM:/PATH)", arg)
	}
	if !strings.HasPrefix(rest, "/") {
		return "", "", false, fmt.Errorf("%q: the path in the VM must be absolute (%s:/%s)", arg, name, rest)
	}
	return name, rest, true, nil
}

type cpJob struct {
	srcVM, srcPath string
	dstVM, dstPath string
	in             bool // into a VM
}

func runCp(ctx context.Context, e *env, j cpJob) error {
	c, err := e.client()
	if err != nil {
		return err
	}
	var prog treecopy.Progress
	stop := showCopyProgress(e.stderr, &prog)
	var to string
	switch {
	case j.in && j.srcPath == "-":
		to = j.dstVM + ":" + j.dstPath
		err = client.CopyInArchive(ctx, c, wire.CopyInParams{Ref: j.dstVM, Path: j.dstPath}, e.stdin, &prog)
	case j.in:
		to = j.dstVM + ":" + j.dstPath
		err = client.CopyIn(ctx, c, wire.CopyInParams{Ref: j.dstVM, Path: j.dstPath}, j.srcPath, &prog)
	case j.dstPath == "-":
		to = "stdout"
		err = client.CopyOutArchive(ctx, c, wire.CopyOutParams{Ref: j.srcVM, Path: j.srcPath}, e.stdout, &prog, e.stderr)
	default:
		to = j.dstPath
		err = client.CopyOut(ctx, c, wire.CopyOutParams{Ref: j.srcVM, Path: j.srcPath}, j.dstPath, &prog, e.stderr)
	}
	stop()
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "copied %s to %s\n", copied(&prog), to)
	return nil
}

func copied(p *treecopy.Progress) string {
	if n := p.Entries.Load(); n > 0 {
		return fmt.Sprintf("%d entries (%s)", n, humanBytes(p.Bytes.Load()))
	}
	return humanBytes(p.Bytes.Load())
}

// plainProgressEvery is how often a copy that is not on a terminal says
// how far it got.
const plainProgressEvery = 10 * time.Second

// showCopyProgress shows how far a copy got on w until stop: a line
// redrawn in place on a terminal, a plain line now and then otherwise.
func showCopyProgress(w io.Writer, p *treecopy.Progress) (stop func()) {
	tty := isTerminal(w)
	pl := &progressLine{w: w, tty: tty, start: time.Now()}
	every := plainProgressEvery
	if tty {
		every = progressTick
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				pl.clear()
				return
			case <-t.C:
				text := "copying: " + copied(p)
				if text == pl.text {
					pl.redraw() // the time moves on
				} else {
					pl.set(text)
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

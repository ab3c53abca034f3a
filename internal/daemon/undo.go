package daemon

// undoStack is how create and start stay all-or-nothing: each step that
// makes something (a TAP, a row, a folder, a process, a guest connection)
// registers how to take it back right after it succeeds; if the work fails,
// run undoes them in reverse order. After success they are dropped.
//
//	var u undoStack
//	defer u.run()
//	tap, undo, err := take(); if err != nil { return err }
//	u.add("tap", undo)
//	...
//	u.success()
type undoStack struct {
	steps []undoStep
	done  bool
}

type undoStep struct {
	name string
	fn   func()
}

// add registers the undo of the step just done.
func (u *undoStack) add(name string, fn func()) {
	u.steps = append(u.steps, undoStep{name, fn})
}

// success keeps everything made so far.
func (u *undoStack) success() { u.done = true }

// run undoes every registered step, newest first, unless success was
// called. It is meant to be deferred.
func (u *undoStack) run() {
	if u.done {
		return
	}
	for i := len(u.steps) - 1; i >= 0; i-- {
		u.steps[i].fn()
	}
	u.steps = nil
}

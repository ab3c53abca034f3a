package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// Operation is an asynchronous task (vm.create, image.build, ...).
type Operation struct {
	ID         string
	Kind       string // vm.create, image.build, ...
	Target     string // VM or image the operation acts on
	State      string // one of the wire.Op* states; see wire.OpFinished
	Progress   string
	Error      string
	ErrorCode  string // wire error code of a failure: not_found, invalid, ...
	Result     json.RawMessage
	CreatedAt  time.Time  // zero: now for a new operation, unchanged otherwise
	UpdatedAt  time.Time  // stamped by PutOperation
	FinishedAt *time.Time // nil while unfinished; see PutOperation
}

const opColumns = `id, kind, target, state, progress, error, result, created_at, updated_at, finished_at, error_code`

func scanOp(row scanner) (Operation, error) {
	var op Operation
	var result sql.NullString
	var created, updated int64
	var finished sql.NullInt64
	if err := row.Scan(&op.ID, &op.Kind, &op.Target, &op.State, &op.Progress, &op.Error,
		&result, &created, &updated, &finished, &op.ErrorCode); err != nil {
		return Operation{}, err
	}
	op.Result = fromJSON(result)
	op.CreatedAt, op.UpdatedAt = fromNanos(created), fromNanos(updated)
	if finished.Valid {
		t := fromNanos(finished.Int64)
		op.FinishedAt = &t
	}
	return op, nil
}

// PutOperation inserts the operation or replaces the one with the same ID.
// FinishedAt follows State so the two never disagree: it is stored as NULL
// for an unfinished state and defaults to now for a terminal one.
func (o *ops) PutOperation(ctx context.Context, op Operation) error {
	result, err := jsonArg(fmt.Sprintf("operation %s result", op.ID), op.Result)
	if err != nil {
		return err
	}
	now := toNanos(o.now())
	var finished any
	if wire.OpFinished(op.State) {
		finished = now
		if op.FinishedAt != nil && !op.FinishedAt.IsZero() {
			finished = toNanos(*op.FinishedAt)
		}
	}
	// ?8 is the caller's creation time (0 = unset), ?9 is now.
	_, err = o.w.ExecContext(ctx, `INSERT INTO operations (`+opColumns+`)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, coalesce(nullif(?8, 0), ?9), ?9, ?10, ?11)
		ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, target = excluded.target,
			state = excluded.state, progress = excluded.progress, error = excluded.error,
			result = excluded.result, updated_at = excluded.updated_at,
			finished_at = excluded.finished_at, error_code = excluded.error_code,
			created_at = coalesce(nullif(?8, 0), operations.created_at)`,
		op.ID, op.Kind, op.Target, op.State, op.Progress, op.Error, result,
		toNanos(op.CreatedAt), now, finished, op.ErrorCode)
	if err != nil {
		return fmt.Errorf("put operation %s: %w", op.ID, err)
	}
	return nil
}

// GetOperation returns the operation with this ID.
func (o *ops) GetOperation(ctx context.Context, id string) (Operation, error) {
	return queryOne(ctx, o.r, fmt.Sprintf("operation %s", id), scanOp,
		`SELECT `+opColumns+` FROM operations WHERE id = ?`, id)
}

// ListOperations returns all operations ordered by creation time (then ID).
func (o *ops) ListOperations(ctx context.Context) ([]Operation, error) {
	return queryAll(ctx, o.r, "operations", scanOp, `SELECT `+opColumns+` FROM operations ORDER BY created_at, id`)
}

// FailUnfinishedOperations marks every unfinished operation failed with
// reason as its error, and returns how many there were. The daemon calls it
// at start: the goroutines that ran them died with the previous process.
func (o *ops) FailUnfinishedOperations(ctx context.Context, reason string) (int, error) {
	now := toNanos(o.now())
	return execCount(ctx, o.w, "fail unfinished operations", `UPDATE operations
		SET state = ?, error = ?, updated_at = ?, finished_at = ?
		WHERE finished_at IS NULL`, wire.OpFailed, reason, now, now)
}

// PruneOperations deletes operations that finished before the given time and
// returns how many; unfinished ones are never pruned.
func (o *ops) PruneOperations(ctx context.Context, finishedBefore time.Time) (int, error) {
	return execCount(ctx, o.w, "prune operations", `DELETE FROM operations
		WHERE finished_at IS NOT NULL AND finished_at < ?`, toNanos(finishedBefore))
}

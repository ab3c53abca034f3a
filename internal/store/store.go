package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Sentinel errors, always wrapped with context; test with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// busyTimeoutMS bounds how long a connection waits for a lock held by
// another connection or process before failing with SQLITE_BUSY.
const busyTimeoutMS = 5000

// dbtx is what both *sql.DB and *sql.Tx offer; the query code is written once
// against it.
type dbtx interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// ops holds the query methods shared by Store and Tx. r serves reads and w
// serves writes; in a Tx both are the transaction.
type ops struct {
	r, w dbtx
	now  func() time.Time
}

// Store is the open database. It is safe for concurrent use.
type Store struct {
	ops
	rdb, wdb *sql.DB
}

// Tx is a write transaction opened by WithTx; it has the same query methods
// as Store and sees its own uncommitted changes.
type Tx struct {
	ops
}

// Open opens (creating if absent) the database file at path and applies
// pending migrations. The parent directory must already exist.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		// Two pools must see the same database, so it has to be a plain file.
		return nil, fmt.Errorf("open store: need a database file path, got %q", path)
	}
	// Create the file ourselves so it is private (SQLite copies the mode
	// to the -wal and -shm files) and a missing directory fails clearly.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	f.Close()

	// file: URI so that a path containing '?' or '#' is not misparsed.
	base := "file:" + (&url.URL{Path: path}).EscapedPath()
	common := fmt.Sprintf("_pragma=busy_timeout(%d)&_pragma=foreign_keys(1)", busyTimeoutMS)

	wdb, err := sql.Open("sqlite", base+"?"+common+
		"&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxLifetime(0)
	wdb.SetConnMaxIdleTime(0)
	if err := migrate(ctx, wdb, migrationFS); err != nil {
		wdb.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}

	rdb, err := sql.Open("sqlite", base+"?"+common+"&_pragma=query_only(1)")
	if err != nil {
		wdb.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	rdb.SetMaxOpenConns(n)
	rdb.SetMaxIdleConns(n)

	return &Store{ops: ops{r: rdb, w: wdb, now: time.Now}, rdb: rdb, wdb: wdb}, nil
}

// Close closes both connection pools; the last close checkpoints the WAL.
func (s *Store) Close() error {
	return errors.Join(s.rdb.Close(), s.wdb.Close())
}

// Check runs SQLite's full integrity_check (indexes against their tables
// too, which quick_check skips) and a foreign key check, for `ember
// doctor`. It returns nil when the database is healthy.
func (s *Store) Check(ctx context.Context) error {
	rows, err := s.rdb.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return fmt.Errorf("store integrity_check: %w", err)
	}
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			rows.Close()
			return fmt.Errorf("store integrity_check: %w", err)
		}
		if line != "ok" {
			problems = append(problems, line)
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return fmt.Errorf("store integrity_check: %w", err)
	}
	rows, err = s.rdb.QueryContext(ctx, "PRAGMA foreign_key_check")
	if err != nil {
		return fmt.Errorf("store foreign_key_check: %w", err)
	}
	for rows.Next() {
		var table, parent string
		var rowid sql.NullInt64
		var fkid int
		if err := rows.Scan(&table, &rowid, &parent, &fkid); err != nil {
			rows.Close()
			return fmt.Errorf("store foreign_key_check: %w", err)
		}
		problems = append(problems, fmt.Sprintf("%s row %d: dangling reference to %s", table, rowid.Int64, parent))
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return fmt.Errorf("store foreign_key_check: %w", err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("store integrity: %s", strings.Join(problems, "; "))
	}
	return nil
}

// SchemaVersion reports the applied migration version (PRAGMA user_version).
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	if err := s.rdb.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return 0, fmt.Errorf("store schema version: %w", err)
	}
	return v, nil
}

// WithTx runs fn in one write transaction, committed when fn returns nil and
// rolled back otherwise (also on panic). Use only tx inside fn: the Store's
// writer connection is held by tx until fn returns.
func (s *Store) WithTx(ctx context.Context, fn func(tx *Tx) error) error {
	sqlTx, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store begin: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			sqlTx.Rollback()
		}
	}()
	if err := fn(&Tx{ops: ops{r: sqlTx, w: sqlTx, now: s.now}}); err != nil {
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("store commit: %w", err)
	}
	committed = true
	return nil
}

// isConstraint reports whether err is a UNIQUE or PRIMARY KEY violation.
func isConstraint(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
}

// toNanos and fromNanos map time.Time to the stored INTEGER; the zero time
// is 0 because time.Time{}.UnixNano() is out of range.
func toNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// orNow returns t, or now when t is zero.
func orNow(t, now time.Time) time.Time {
	if t.IsZero() {
		return now
	}
	return t
}

// jsonArg converts a RawMessage to a column value: NULL when empty, and an
// error (rather than a CHECK failure) when it is not valid JSON.
func jsonArg(what string, raw []byte) (any, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	if !json.Valid(raw) {
		return nil, fmt.Errorf("%s: invalid JSON", what)
	}
	return string(raw), nil
}

// fromJSON converts a nullable JSON column back; NULL becomes nil.
func fromJSON(s sql.NullString) []byte {
	if !s.Valid {
		return nil
	}
	return []byte(s.String)
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

// queryOne runs a single-row query; no row is ErrNotFound wrapped in what.
func queryOne[T any](ctx context.Context, q dbtx, what string, scan func(scanner) (T, error), query string, args ...any) (T, error) {
	v, err := scan(q.QueryRowContext(ctx, query, args...))
	if errors.Is(err, sql.ErrNoRows) {
		return v, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	if err != nil {
		return v, fmt.Errorf("get %s: %w", what, err)
	}
	return v, nil
}

// queryAll runs a query and scans every row; no rows is an empty slice.
func queryAll[T any](ctx context.Context, q dbtx, what string, scan func(scanner) (T, error), query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", what, err)
	}
	defer rows.Close()
	list := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", what, err)
		}
		list = append(list, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", what, err)
	}
	return list, nil
}

// execCount runs a write and returns the number of rows it changed.
func execCount(ctx context.Context, q dbtx, what, query string, args ...any) (int, error) {
	res, err := q.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return int(n), nil
}

// execOne runs a write that must change one row; zero rows is ErrNotFound.
func execOne(ctx context.Context, q dbtx, what, query string, args ...any) error {
	n, err := execCount(ctx, q, what, query, args...)
	if err == nil && n == 0 {
		err = fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return err
}

// scanString scans a row of one text column.
func scanString(row scanner) (string, error) {
	var s string
	err := row.Scan(&s)
	return s, err
}

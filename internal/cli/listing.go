package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/termtext"
)

// Every listing (ls, image ls, kernel ls, op ls, session ls) takes the
// output flags of docker's: --json (an indented array), -q (one key a
// line), --format (a Go template over each item's fields, `table ...`
// for aligned columns under a header, or `json` for a JSON object a
// line) and --filter KEY=VALUE (repeatable: values of one key widen, keys
// narrow). inspect takes --format too.

// listFlags are a listing's output flags as given.
type listFlags struct {
	json    bool
	quiet   bool
	format  string
	filters []string
}

// listing says how one kind of item is listed.
type listing[T any] struct {
	noun    string         // "VMs"
	quiet   string         // what -q prints: "names"
	header  string         // the default table's header, tab separated
	row     func(T) string // one row of the default table
	key     func(T) string // what -q prints of an item
	filters []filterKey[T]
}

// filterKey is one KEY of --filter KEY=VALUE.
type filterKey[T any] struct {
	name string
	// values, when set, are all the values the key takes; others are a
	// usage error naming them.
	values []string
	match  func(item T, value string) bool
	// complete offers values in shell completion.
	complete names
}

// addFlags registers the listing's flags on cmd.
func (l *listing[T]) addFlags(cmd *cobra.Command, e *env, f *listFlags) {
	fl := cmd.Flags()
	fl.BoolVar(&f.json, "json", false, "print the "+l.noun+" as a JSON array")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "print only the "+l.noun+"' "+l.quiet+", one a line")
	fl.StringVar(&f.format, "format", "", "print each of the "+l.noun+" with a Go template (`{{.Name}}`; `table {{.Name}}\\t{{.State}}` adds a header; `json` prints one JSON object a line)")
	if len(l.filters) == 0 {
		return
	}
	keys := make([]string, len(l.filters))
	for i, k := range l.filters {
		keys[i] = k.name
	}
	fl.StringArrayVar(&f.filters, "filter", nil, "show only the "+l.noun+" that match KEY=VALUE ("+strings.Join(keys, ", ")+"); repeat it: values of one key widen, keys narrow")
	_ = cmd.RegisterFlagCompletionFunc("filter", completeFlag(e, func(ctx context.Context, e *env, args []string) []string {
		var out []string
		for _, k := range l.filters {
			vals := k.values
			if k.complete != nil {
				vals = k.complete(ctx, e, args)
			}
			for _, v := range vals {
				out = append(out, k.name+"="+v)
			}
		}
		return out
	}))
}

// listPlan is a listing's output flags checked and compiled.
type listPlan[T any] struct {
	l       *listing[T]
	f       *listFlags
	tmpl    *template.Template
	table   bool // a `table` format: aligned, under a header
	jsonRow bool // `--format json`
	filters map[string][]string
	order   []string
}

// plan checks the flags (a usage error before the daemon is asked).
func (l *listing[T]) plan(cmd *cobra.Command, f *listFlags) (*listPlan[T], error) {
	p := &listPlan[T]{l: l, f: f, filters: map[string][]string{}}
	set := 0
	for _, b := range []bool{f.json, f.quiet, f.format != ""} {
		if b {
			set++
		}
	}
	if set > 1 {
		return nil, usagef(cmd, "--json, --quiet and --format each choose the output: give one")
	}
	for _, kv := range f.filters {
		k, v, ok := strings.Cut(kv, "=")
		key := l.filterKey(k)
		switch {
		case !ok:
			return nil, usagef(cmd, "--filter %q: want KEY=VALUE", kv)
		case key == nil:
			return nil, usagef(cmd, "--filter %q: unknown key %q; the keys are %s", kv, k, l.filterKeys())
		case key.values != nil && !contains(key.values, v):
			return nil, usagef(cmd, "--filter %q: %s is one of %s", kv, k, strings.Join(key.values, ", "))
		}
		if _, seen := p.filters[k]; !seen {
			p.order = append(p.order, k)
		}
		p.filters[k] = append(p.filters[k], v)
	}
	if f.format != "" && f.format != "table" { // `table` alone is the default table, as docker's
		tmpl, table, jsonRow, err := parseFormat[T](f.format)
		if err != nil {
			return nil, usagef(cmd, "--format: %v", err)
		}
		p.tmpl, p.table, p.jsonRow = tmpl, table, jsonRow
	}
	return p, nil
}

func (l *listing[T]) filterKey(name string) *filterKey[T] {
	for i := range l.filters {
		if l.filters[i].name == name {
			return &l.filters[i]
		}
	}
	return nil
}

func (l *listing[T]) filterKeys() string {
	keys := make([]string, len(l.filters))
	for i, k := range l.filters {
		keys[i] = k.name
	}
	return strings.Join(keys, ", ")
}

// keep is items that pass every filter key (any of its values).
func (p *listPlan[T]) keep(items []T) []T {
	out := []T{}
	for _, it := range items {
		ok := true
		for _, k := range p.order {
			key, hit := p.l.filterKey(k), false
			for _, v := range p.filters[k] {
				hit = hit || key.match(it, v)
			}
			ok = ok && hit
		}
		if ok {
			out = append(out, it)
		}
	}
	return out
}

// print writes the filtered items in the chosen output.
func (p *listPlan[T]) print(w io.Writer, items []T) error {
	items = p.keep(items)
	switch {
	case p.f.json:
		return printJSON(w, items)
	case p.f.quiet:
		clean := termtext.NewWriter(w)
		for _, it := range items {
			fmt.Fprintln(clean, p.l.key(it))
		}
		return clean.Close()
	case p.tmpl != nil || p.jsonRow:
		return printFormatted(w, p.tmpl, p.table, p.jsonRow, items)
	}
	tw := table(w)
	fmt.Fprintln(tw, p.l.header)
	for _, it := range items {
		fmt.Fprintln(tw, p.l.row(it))
	}
	return tw.Flush()
}

// parseFormat compiles a --format value: "json", "table", "table TEMPLATE"
// or "TEMPLATE". `\t` and `\n` written out stand for a tab and a newline,
// as docker reads them. A field that T lacks is found here, not halfway
// through the output.
func parseFormat[T any](format string) (tmpl *template.Template, asTable, jsonRow bool, err error) {
	if format == "json" {
		return nil, false, true, nil
	}
	if rest, ok := strings.CutPrefix(format, "table"); ok && (rest == "" || rest[0] == ' ') {
		asTable, format = true, strings.TrimPrefix(rest, " ")
		if format == "" {
			return nil, false, false, fmt.Errorf("table takes a template here: table {{.Name}}\\t{{.State}}")
		}
	}
	format = strings.NewReplacer(`\t`, "\t", `\n`, "\n").Replace(format)
	tmpl, err = template.New("format").Funcs(formatFuncs).Parse(format)
	if err != nil {
		return nil, false, false, err
	}
	var zero T
	if err := tmpl.Execute(io.Discard, zero); err != nil && strings.Contains(err.Error(), "can't evaluate field") {
		return nil, false, false, err
	}
	return tmpl, asTable, false, nil
}

// formatFuncs are the functions a --format template may call, docker's.
var formatFuncs = template.FuncMap{
	"json": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(escapeForTerminal(b)), err
	},
	"join":  strings.Join,
	"upper": strings.ToUpper,
	"lower": strings.ToLower,
	"truncate": func(s string, n int) string {
		if r := []rune(s); len(r) > n && n >= 0 {
			return string(r[:n])
		}
		return s
	},
}

// printFormatted writes each item through tmpl, one a line (a template
// that ends in a newline gets no second one), or as JSON lines.
func printFormatted[T any](w io.Writer, tmpl *template.Template, asTable, jsonRow bool, items []T) error {
	// Both writers drop what a terminal would act on (termtext).
	var out interface {
		io.Writer
		Flush() error
	}
	if asTable {
		tw := table(w)
		fmt.Fprintln(tw, formatHeader[T](tmpl))
		out = tw
	} else {
		out = closer{termtext.NewWriter(w)}
	}
	for _, it := range items {
		var b bytes.Buffer
		if jsonRow {
			j, err := json.Marshal(it)
			if err != nil {
				return err
			}
			b.Write(escapeForTerminal(j))
		} else if err := tmpl.Execute(&b, it); err != nil {
			return err
		}
		if !bytes.HasSuffix(b.Bytes(), []byte("\n")) {
			b.WriteByte('\n')
		}
		if _, err := out.Write(b.Bytes()); err != nil {
			return err
		}
	}
	return out.Flush()
}

// closer gives a termtext.Writer the tableWriter's Flush.
type closer struct{ *termtext.Writer }

func (c closer) Flush() error { return c.Close() }

// formatHeader is the header of a `table` format: the template's text
// with each action replaced by the name of the field it shows (the
// field's JSON name, upper-cased: {{.CreatedAt}} is CREATED_AT).
func formatHeader[T any](tmpl *template.Template) string {
	var b strings.Builder
	for _, n := range tmpl.Tree.Root.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			b.Write(n.Text)
		case *parse.ActionNode:
			b.WriteString(headerOf(reflect.TypeFor[T](), firstField(n.Pipe)))
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

// firstField is the first field a pipeline reads, "" if none.
func firstField(p *parse.PipeNode) string {
	if p == nil {
		return ""
	}
	for _, c := range p.Cmds {
		for _, a := range c.Args {
			switch a := a.(type) {
			case *parse.FieldNode:
				return a.Ident[0]
			case *parse.PipeNode:
				if f := firstField(a); f != "" {
					return f
				}
			}
		}
	}
	return ""
}

func headerOf(t reflect.Type, field string) string {
	if field == "" {
		return ""
	}
	if t.Kind() == reflect.Struct {
		if sf, ok := t.FieldByName(field); ok {
			if name, _, _ := strings.Cut(sf.Tag.Get("json"), ","); name != "" && name != "-" {
				return strings.ToUpper(name)
			}
		}
	}
	return strings.ToUpper(field)
}

// Package report prints the benchmark's results as Markdown tables (and
// JSON), and formats the quantities they hold.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// Table is one scenario's result.
type Table struct {
	Title  string     `json:"title"`
	Header []string   `json:"header"`
	Rows   [][]string `json:"rows"`
	// Notes are printed under the table.
	Notes []string `json:"notes,omitempty"`
}

// Markdown writes t with numbers right-aligned (every column but the first
// two).
func (t Table) Markdown(w io.Writer) {
	fmt.Fprintf(w, "\n### %s\n\n", t.Title)
	fmt.Fprintf(w, "| %s |\n", strings.Join(t.Header, " | "))
	align := make([]string, len(t.Header))
	for i := range align {
		align[i] = "---"
		if i >= 2 {
			align[i] = "---:"
		}
	}
	fmt.Fprintf(w, "| %s |\n", strings.Join(align, " | "))
	for _, r := range t.Rows {
		fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
	}
	if len(t.Notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range t.Notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
}

// WriteJSON writes the run's header lines and tables to path.
func WriteJSON(path string, header []string, tables []Table) error {
	b, err := json.MarshalIndent(struct {
		Header []string `json:"header"`
		Tables []Table  `json:"tables"`
	}{header, tables}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o600)
}

// Int formats n with thousands separators.
func Int(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + Int(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// Micros formats d in µs (or ms past 10 ms).
func Micros(d time.Duration) string {
	if d >= 10*time.Millisecond {
		return Millis(d)
	}
	return Int(d.Microseconds()) + " µs"
}

// Millis formats d in ms, with one decimal under 10 ms.
func Millis(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	if ms < 10 {
		return fmt.Sprintf("%.1f ms", ms)
	}
	return Int(int64(ms+0.5)) + " ms"
}

// Seconds formats d in s with one decimal.
func Seconds(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// MiB formats a byte count.
func MiB(b int64) string { return Int((b+1<<19)>>20) + " MiB" }

// Ratio formats r as 0.95×.
func Ratio(r float64) string { return fmt.Sprintf("%.2f×", r) }

// Codes formats counts by gRPC code, largest first: "12 Unavailable, 3
// DeadlineExceeded"; "0" for none.
func Codes(m map[string]int) string {
	type kv struct {
		k string
		v int
	}
	var s []kv
	for k, v := range m {
		if v > 0 {
			s = append(s, kv{k, v})
		}
	}
	if len(s) == 0 {
		return "0"
	}
	sort.Slice(s, func(i, j int) bool { return s[i].v > s[j].v || s[i].v == s[j].v && s[i].k < s[j].k })
	parts := make([]string, len(s))
	for i, e := range s {
		parts[i] = Int(int64(e.v)) + " " + e.k
	}
	return strings.Join(parts, ", ")
}

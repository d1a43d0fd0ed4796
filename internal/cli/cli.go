// Package cli holds what the commands of the meshca binary share: flag
// values taken from MESHCA_* environment variables and a YAML config file,
// the log flags, exit codes, and output as a table, JSON or YAML.
package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/meshca/meshca/internal/files"
)

// EnvPrefix starts the environment variable of every flag: --data-dir is
// MESHCA_DATA_DIR.
const EnvPrefix = "MESHCA_"

// EnvName is the environment variable of a flag.
func EnvName(flag string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Resolve takes --config (or MESHCA_CONFIG) into *configFile, then applies
// the environment and the file to the flags not given.
func Resolve(fs *pflag.FlagSet, configFile *string) error {
	if !fs.Changed("config") {
		*configFile = os.Getenv(EnvName("config"))
	}
	return ApplyConfig(fs, *configFile)
}

// ApplyConfig fills every flag not given on the command line from its
// MESHCA_* environment variable, else from the YAML config file named by
// configPath (keys are flag names), else leaves its default. Unknown keys in
// the file are errors, so a misspelling is never silently ignored.
func ApplyConfig(fs *pflag.FlagSet, configPath string) error {
	file, err := readConfig(fs, configPath)
	if err != nil {
		return err
	}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" {
			return
		}
		val, from, ok := "", "", false
		if v, set := os.LookupEnv(EnvName(f.Name)); set {
			val, from, ok = v, EnvName(f.Name), true
		} else if v, set := file[f.Name]; set {
			val, from, ok = configString(v), configPath+": "+f.Name, true
		}
		if ok {
			if err := setFlag(f, val); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", from, err))
			}
		}
	})
	return errors.Join(errs...)
}

// readConfig reads the YAML file at path ("" none) as flag name → value.
func readConfig(fs *pflag.FlagSet, path string) (map[string]any, error) {
	file := map[string]any{}
	if path == "" {
		return file, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	for k := range file {
		if f := fs.Lookup(k); f == nil || k == "config" {
			return nil, fmt.Errorf("config %s: unknown key %q", path, k)
		}
	}
	return file, nil
}

// setFlag sets f from a string; a list flag takes comma-separated items.
func setFlag(f *pflag.Flag, val string) error {
	sv, isSlice := f.Value.(pflag.SliceValue)
	if !isSlice {
		return f.Value.Set(val)
	}
	var items []string
	for _, it := range strings.Split(val, ",") {
		// An empty item ("a,,b", " ") names nothing: kept, it would be an
		// empty DNS SAN or namespace, and " " would differ from "".
		if it = strings.TrimSpace(it); it == "" {
			continue
		}
		// pflag's ipSlice Replace accepts anything and stores nil.
		if f.Value.Type() == "ipSlice" && net.ParseIP(it) == nil {
			return fmt.Errorf("%q is not an IP address", it)
		}
		items = append(items, it)
	}
	return sv.Replace(items)
}

func configString(v any) string {
	switch t := v.(type) {
	case nil:
		return ""
	case []any:
		parts := make([]string, len(t))
		for i, p := range t {
			parts[i] = fmt.Sprint(p)
		}
		return strings.Join(parts, ",")
	case float64:
		// YAML numbers decode as float64 through JSON; print integers plainly.
		if t == float64(int64(t)) {
			return fmt.Sprint(int64(t))
		}
	}
	return fmt.Sprint(v)
}

// LogOptions are the flags every long-running command shares.
type LogOptions struct {
	Format string
	Level  string
}

// AddFlags registers --log-format and --log-level.
func (o *LogOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Format, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.Level, "log-level", "info", "log level: debug, info, warn or error")
}

// Logger returns the logger the flags ask for, writing to w.
func (o *LogOptions) Logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.Level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch o.Format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", o.Format)
}

// ExitError carries a process exit code other than 1: `meshca audit` exits
// 2 on usage and input errors (and `audit authz` 1 for a denial).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Usage is an error that exits with code 2.
func Usage(format string, args ...any) error {
	return &ExitError{Code: 2, Err: fmt.Errorf(format, args...)}
}

// UsageArgs makes a cobra argument check fail with exit code 2.
func UsageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return Usage("%v", err)
		}
		return nil
	}
}

// ExitCode is the process exit code for err: 0 for nil, an ExitError's
// code, else 1.
func ExitCode(err error) int {
	var ee *ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.Code
	}
	return 1
}

// Render writes v to w as format "json" or "yaml", or calls table for
// "table" (aligned by a tabwriter).
func Render(w io.Writer, format string, v any, table func(w io.Writer)) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "table":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	return Usage("--output must be table, json or yaml, not %q", format)
}

// Secret reads a secret given either as a file (flag --<flag>, which must
// not be readable by others) or in the environment variable env itself;
// both at once is an error, so it is never unclear which is in use. Neither
// returns nil.
func Secret(flag, path, env string) ([]byte, error) {
	val, envSet := os.LookupEnv(env)
	switch {
	case path != "" && envSet:
		return nil, fmt.Errorf("both --%s and %s are set: choose one", flag, env)
	case path != "":
		if err := files.CheckSecretMode(path); err != nil {
			return nil, fmt.Errorf("--%s: %w", flag, err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", flag, err)
		}
		return b, nil
	case envSet:
		return []byte(val), nil
	}
	return nil, nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// run executes the command line and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "meshca:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "meshca",
		Short:         "Mesh certificate authority and workload identity service",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newServerCmd(), newDevCmd(), newAgentCmd(), newTokenCmd(), newRevokeCmd(), newAuditCmd(), newVersionCmd())
	return root
}

// version is set at link time with -ldflags "-X main.version=...".
var version = "dev"

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "meshca", version)
		},
	}
}

// envPrefix starts the environment variable of every flag: --data-dir is
// MESHCA_DATA_DIR.
const envPrefix = "MESHCA_"

func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// resolveFlags takes --config (or MESHCA_CONFIG) into *configFile, then
// applies the environment and the file to the flags not given.
func resolveFlags(fs *pflag.FlagSet, configFile *string) error {
	if !fs.Changed("config") {
		*configFile = os.Getenv(envName("config"))
	}
	return applyConfig(fs, *configFile)
}

// applyConfig fills every flag not given on the command line from its
// MESHCA_* environment variable, else from the YAML config file named by
// --config (keys are flag names), else leaves its default. Unknown keys in
// the file are errors, so a misspelling is never silently ignored.
func applyConfig(fs *pflag.FlagSet, configPath string) error {
	file := map[string]any{}
	if configPath != "" {
		b, err := os.ReadFile(configPath)
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		if err := yaml.Unmarshal(b, &file); err != nil {
			return fmt.Errorf("config %s: %w", configPath, err)
		}
		for k := range file {
			if f := fs.Lookup(k); f == nil || k == "config" {
				return fmt.Errorf("config %s: unknown key %q", configPath, k)
			}
		}
	}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" {
			return
		}
		val, from, ok := "", "", false
		if v, set := os.LookupEnv(envName(f.Name)); set {
			val, from, ok = v, envName(f.Name), true
		} else if v, set := file[f.Name]; set {
			val, from, ok = configString(v), configPath+": "+f.Name, true
		}
		if !ok {
			return
		}
		if sv, isSlice := f.Value.(pflag.SliceValue); isSlice {
			var items []string
			if val != "" {
				items = strings.Split(val, ",")
			}
			for i, it := range items {
				items[i] = strings.TrimSpace(it)
				// pflag's ipSlice Replace accepts anything and stores nil.
				if f.Value.Type() == "ipSlice" && net.ParseIP(items[i]) == nil {
					errs = append(errs, fmt.Errorf("%s: %q is not an IP address", from, items[i]))
					return
				}
			}
			if err := sv.Replace(items); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", from, err))
			}
			return
		}
		if err := f.Value.Set(val); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", from, err))
		}
	})
	return errors.Join(errs...)
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

// logOptions are the flags every long-running command shares.
type logOptions struct {
	format string
	level  string
}

func (o *logOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.format, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.level, "log-level", "info", "log level: debug, info, warn or error")
}

func (o *logOptions) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch o.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", o.format)
}

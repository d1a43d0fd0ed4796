package cli

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// serverLikeFlags is a FlagSet with the kinds of flags `meshca server`
// has: strings, durations, an int, a bool, a string list, an IP list, and
// --config.
func serverLikeFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
	fs.String("config", "", "")
	fs.String("trust-domain", "cluster.local", "")
	fs.String("data-dir", "/var/lib/meshca", "")
	fs.Duration("max-ttl", 72*time.Hour, "")
	fs.Duration("request-timeout", 10*time.Second, "")
	fs.Int("max-request-bytes", 64<<10, "")
	fs.Bool("no-agent", false, "")
	fs.StringSlice("dns-names", []string{"localhost"}, "")
	fs.IPSlice("ip-sans", []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, "")
	return fs
}

// values renders every flag's value, lists as lists.
func values(fs *pflag.FlagSet) map[string]any {
	out := map[string]any{}
	fs.VisitAll(func(f *pflag.Flag) {
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			out[f.Name] = sv.GetSlice()
			return
		}
		out[f.Name] = f.Value.String()
	})
	return out
}

// FuzzApplyConfig applies an arbitrary YAML config file to a FlagSet like
// the server's, one flag of which was given on the command line. It checks
// that a file with an unknown key (or "config") is refused and changes
// nothing; that the command-line flag and the flags the file does not name
// keep their values; and that an accepted file round-trips: the values it
// set, written back as a config file and applied to fresh flags, give the
// same values.
func FuzzApplyConfig(f *testing.F) {
	serverLikeFlags().VisitAll(func(fl *pflag.Flag) {
		if _, set := os.LookupEnv(EnvName(fl.Name)); set {
			f.Skipf("%s is set in the environment", EnvName(fl.Name))
		}
	})
	f.Add([]byte("trust-domain: example.org\ndata-dir: /tmp/x\nmax-ttl: 24h\nmax-request-bytes: 1024\nno-agent: true\ndns-names: [a, b]\nip-sans: 10.0.0.1, ::1\n"))
	f.Add([]byte("dns-names: a, b ,,c\nip-sans: []\n"))
	f.Add([]byte("ip-sans: [nope]\n"))
	f.Add([]byte("max-request-bytes: 1e3\nmax-ttl: 1.5\n"))
	f.Add([]byte("config: other.yaml\n"))
	f.Add([]byte("trustdomain: x\n"))
	f.Add([]byte("data-dir: {a: b}\nno-agent: null\n"))
	f.Add([]byte("- a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "meshca.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		fs := serverLikeFlags()
		if err := fs.Parse([]string{"--request-timeout=3s"}); err != nil {
			t.Fatal(err)
		}
		defaults := values(fs)
		var file map[string]any
		unknown := false
		if yaml.Unmarshal(data, &file) == nil {
			for k := range file {
				unknown = unknown || fs.Lookup(k) == nil || k == "config"
			}
		}
		err := ApplyConfig(fs, path)
		got := values(fs)
		if got["request-timeout"] != "3s" {
			t.Fatalf("the file overrode the command line: request-timeout %v", got["request-timeout"])
		}
		if unknown && err == nil {
			t.Fatalf("accepted a file with an unknown key: %q", data)
		}
		for name, v := range got {
			if _, named := file[name]; (!named || unknown) && !equalValues(v, defaults[name]) {
				t.Fatalf("flag %s changed to %v though the file does not set it (or was refused: %v)", name, v, err)
			}
		}
		if err != nil {
			return
		}
		back := map[string]any{}
		for name := range file {
			back[name] = got[name]
		}
		out, err := yaml.Marshal(back)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, out, 0o600); err != nil {
			t.Fatal(err)
		}
		fresh := serverLikeFlags()
		if err := fresh.Parse([]string{"--request-timeout=3s"}); err != nil {
			t.Fatal(err)
		}
		if err := ApplyConfig(fresh, path); err != nil {
			t.Fatalf("the values an accepted file set, written back as %q, are refused: %v", out, err)
		}
		for name, v := range values(fresh) {
			if !equalValues(v, got[name]) {
				t.Fatalf("flag %s: %v from %q, %v after writing it back as %q", name, got[name], data, v, out)
			}
		}
	})
}

func equalValues(a, b any) bool {
	as, aok := a.([]string)
	bs, bok := b.([]string)
	if aok && bok {
		if len(as) != len(bs) {
			return false
		}
		for i := range as {
			if as[i] != bs[i] {
				return false
			}
		}
		return true
	}
	return a == b
}

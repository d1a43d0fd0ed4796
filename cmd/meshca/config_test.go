package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshca/meshca/ca/server"

	"github.com/meshca/meshca/internal/cli"
)

// clearMeshcaEnv unsets every MESHCA_* variable for the duration of the test,
// so the developer's environment cannot leak into the configuration.
func clearMeshcaEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, cli.EnvPrefix) {
			t.Setenv(k, "") // restores the old value at the end of the test
			os.Unsetenv(k)
		}
	}
}

// serverFlags returns the options and flag set of `meshca server`, built as
// the real command builds them, with args parsed.
func serverFlags(t *testing.T, args ...string) (*serverOptions, *pflag.FlagSet) {
	t.Helper()
	var o serverOptions
	fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
	o.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return &o, fs
}

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meshca.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestApplyConfigPrecedence(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		file string // YAML; empty means no --config
		// want maps flag names to the String() of their value.
		want map[string]string
	}{
		{
			name: "defaults",
			want: map[string]string{
				"trust-domain":      "cluster.local",
				"dns-names":         "[localhost]",
				"ip-sans":           "[127.0.0.1,::1]",
				"default-ttl":       "24h0m0s",
				"max-request-bytes": strconv.Itoa(server.DefaultMaxRequestBytes),
				"log-level":         "info",
			},
		},
		{
			name: "file beats default",
			file: "trust-domain: file.example\n",
			want: map[string]string{"trust-domain": "file.example", "data-dir": "/var/lib/meshca"},
		},
		{
			name: "env beats file",
			env:  map[string]string{"MESHCA_TRUST_DOMAIN": "env.example"},
			file: "trust-domain: file.example\n",
			want: map[string]string{"trust-domain": "env.example"},
		},
		{
			name: "env beats default",
			env:  map[string]string{"MESHCA_DATA_DIR": "/srv/meshca"},
			want: map[string]string{"data-dir": "/srv/meshca"},
		},
		{
			name: "flag beats env and file",
			args: []string{"--trust-domain", "flag.example"},
			env:  map[string]string{"MESHCA_TRUST_DOMAIN": "env.example"},
			file: "trust-domain: file.example\n",
			want: map[string]string{"trust-domain": "flag.example"},
		},
		{
			name: "flag set to its default still beats env",
			args: []string{"--log-level=info"},
			env:  map[string]string{"MESHCA_LOG_LEVEL": "debug"},
			want: map[string]string{"log-level": "info"},
		},
		{
			name: "each key from its own source",
			args: []string{"--grpc-listen", "127.0.0.1:1"},
			env:  map[string]string{"MESHCA_HTTPS_LISTEN": "127.0.0.1:2"},
			file: "grpc-listen: 127.0.0.1:10\nhttps-listen: 127.0.0.1:20\nmonitoring-listen: 127.0.0.1:30\n",
			want: map[string]string{
				"grpc-listen":       "127.0.0.1:1",
				"https-listen":      "127.0.0.1:2",
				"monitoring-listen": "127.0.0.1:30",
				"data-dir":          "/var/lib/meshca",
			},
		},
		{
			name: "list as YAML list",
			file: "dns-names:\n  - a.example\n  - b.example\n",
			want: map[string]string{"dns-names": "[a.example,b.example]"},
		},
		{
			name: "list as YAML flow sequence",
			file: "dns-names: [a.example, b.example]\nip-sans: [10.0.0.1, '::1']\n",
			want: map[string]string{"dns-names": "[a.example,b.example]", "ip-sans": "[10.0.0.1,::1]"},
		},
		{
			name: "list as comma string in env beats file",
			env:  map[string]string{"MESHCA_DNS_NAMES": "c.example,d.example", "MESHCA_IP_SANS": "10.1.1.1,10.2.2.2"},
			file: "dns-names:\n  - a.example\n",
			want: map[string]string{"dns-names": "[c.example,d.example]", "ip-sans": "[10.1.1.1,10.2.2.2]"},
		},
		{
			name: "list from env replaces the default, not appends",
			env:  map[string]string{"MESHCA_DNS_NAMES": "ca.example"},
			want: map[string]string{"dns-names": "[ca.example]"},
		},
		{
			name: "empty list in env clears the default",
			env:  map[string]string{"MESHCA_DNS_NAMES": ""},
			want: map[string]string{"dns-names": "[]"},
		},
		{
			name: "list flag beats env",
			args: []string{"--dns-names", "x.example,y.example"},
			env:  map[string]string{"MESHCA_DNS_NAMES": "c.example"},
			want: map[string]string{"dns-names": "[x.example,y.example]"},
		},
		{
			name: "durations from file",
			file: "default-ttl: 2h\nmax-ttl: 90m\nrequest-timeout: 45s\n",
			want: map[string]string{"default-ttl": "2h0m0s", "max-ttl": "1h30m0s", "request-timeout": "45s"},
		},
		{
			name: "duration from env beats file",
			env:  map[string]string{"MESHCA_DEFAULT_TTL": "3h"},
			file: "default-ttl: 2h\n",
			want: map[string]string{"default-ttl": "3h0m0s"},
		},
		{
			name: "integer from file",
			file: "max-request-bytes: 1048576\n",
			want: map[string]string{"max-request-bytes": "1048576"},
		},
		{
			name: "empty file",
			file: "\n",
			want: map[string]string{"trust-domain": "cluster.local"},
		},
		{
			name: "YAML null is an empty value",
			file: "cacerts-dir:\nkek-file: null\n",
			want: map[string]string{"cacerts-dir": "", "kek-file": ""},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearMeshcaEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, fs := serverFlags(t, tc.args...)
			path := ""
			if tc.file != "" {
				path = writeConfig(t, tc.file)
			}
			if err := cli.ApplyConfig(fs, path); err != nil {
				t.Fatalf("applyConfig: %v", err)
			}
			for name, want := range tc.want {
				f := fs.Lookup(name)
				if f == nil {
					t.Fatalf("no flag %q", name)
				}
				if got := f.Value.String(); got != want {
					t.Errorf("--%s = %s, want %s", name, got, want)
				}
			}
		})
	}
}

// The values land in the typed options the command uses, not only in the
// flag set.
func TestApplyConfigFillsOptions(t *testing.T) {
	clearMeshcaEnv(t)
	t.Setenv("MESHCA_IP_SANS", "10.0.0.7")
	t.Setenv("MESHCA_RETENTION", "48h")
	o, fs := serverFlags(t, "--key-type", "rsa-2048")
	path := writeConfig(t, `
trust-domain: prod.example
dns-names: [meshca.prod.example, meshca]
max-request-bytes: 4096
request-timeout: 5s
key-type: ecdsa-p384
`)
	if err := cli.ApplyConfig(fs, path); err != nil {
		t.Fatal(err)
	}
	if o.trustDomain != "prod.example" {
		t.Errorf("trustDomain = %q", o.trustDomain)
	}
	if strings.Join(o.cfg.DNSNames, " ") != "meshca.prod.example meshca" {
		t.Errorf("dnsNames = %q", o.cfg.DNSNames)
	}
	if len(o.cfg.IPs) != 1 || o.cfg.IPs[0].String() != "10.0.0.7" {
		t.Errorf("ipSANs = %v", o.cfg.IPs)
	}
	if o.cfg.MaxRequestBytes != 4096 {
		t.Errorf("maxRequestBytes = %d", o.cfg.MaxRequestBytes)
	}
	if o.cfg.RequestTimeout != 5*time.Second {
		t.Errorf("requestTimeout = %v", o.cfg.RequestTimeout)
	}
	if o.cfg.Retention != 48*time.Hour {
		t.Errorf("retention = %v", o.cfg.Retention)
	}
	if o.keyType != "rsa-2048" {
		t.Errorf("keyType = %q, want the command line's rsa-2048", o.keyType)
	}
}

func TestApplyConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		file    string
		noFile  bool // pass a path that does not exist
		wantMsg []string
	}{
		{
			name:    "unknown key",
			file:    "trust-domain: a.example\ntrust-domian: b.example\n",
			wantMsg: []string{"unknown key", `"trust-domian"`, "meshca.yaml"},
		},
		{
			name:    "config key inside the config file",
			file:    "config: other.yaml\n",
			wantMsg: []string{"unknown key", `"config"`},
		},
		{
			name:    "bad integer in file",
			file:    "max-request-bytes: abc\n",
			wantMsg: []string{"meshca.yaml", "max-request-bytes", "abc"},
		},
		{
			name:    "bad duration in file",
			file:    "default-ttl: forever\n",
			wantMsg: []string{"meshca.yaml", "default-ttl"},
		},
		{
			name:    "bad IP in file list",
			file:    "ip-sans: [10.0.0.1, not-an-ip]\n",
			wantMsg: []string{"meshca.yaml", "ip-sans"},
		},
		{
			name:    "bad IP in env list",
			env:     map[string]string{"MESHCA_IP_SANS": "127.0.0.1,localhost"},
			wantMsg: []string{"MESHCA_IP_SANS"},
		},
		{
			name:    "bad integer in env",
			env:     map[string]string{"MESHCA_MAX_REQUEST_BYTES": "abc"},
			wantMsg: []string{"MESHCA_MAX_REQUEST_BYTES", "abc"},
		},
		{
			name:    "bad duration in env",
			env:     map[string]string{"MESHCA_REQUEST_TIMEOUT": "10"},
			wantMsg: []string{"MESHCA_REQUEST_TIMEOUT"},
		},
		{
			name: "errors from several sources are all reported",
			env:  map[string]string{"MESHCA_MAX_TTL": "soon"},
			file: "max-request-bytes: abc\n",
			wantMsg: []string{
				"MESHCA_MAX_TTL",
				"max-request-bytes",
			},
		},
		{
			name:    "missing file",
			noFile:  true,
			wantMsg: []string{"config", "no-such.yaml"},
		},
		{
			name:    "not YAML",
			file:    "trust-domain: [unclosed\n",
			wantMsg: []string{"meshca.yaml"},
		},
		{
			name:    "not a mapping",
			file:    "- trust-domain\n",
			wantMsg: []string{"meshca.yaml"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearMeshcaEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, fs := serverFlags(t)
			path := ""
			switch {
			case tc.noFile:
				path = filepath.Join(t.TempDir(), "no-such.yaml")
			case tc.file != "":
				path = writeConfig(t, tc.file)
			}
			err := cli.ApplyConfig(fs, path)
			if err == nil {
				t.Fatal("applyConfig succeeded, want an error")
			}
			for _, want := range tc.wantMsg {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

// resolve takes the config file from --config, else from MESHCA_CONFIG.
func TestResolveConfigFile(t *testing.T) {
	fromEnv := writeConfig(t, "trust-domain: env-file.example\n")
	fromFlag := writeConfig(t, "trust-domain: flag-file.example\n")
	tests := []struct {
		name string
		args []string
		env  string
		want string
	}{
		{name: "none", want: "cluster.local"},
		{name: "MESHCA_CONFIG", env: fromEnv, want: "env-file.example"},
		{name: "--config", args: []string{"--config", fromFlag}, want: "flag-file.example"},
		{name: "--config beats MESHCA_CONFIG", args: []string{"--config", fromFlag}, env: fromEnv, want: "flag-file.example"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearMeshcaEnv(t)
			if tc.env != "" {
				t.Setenv("MESHCA_CONFIG", tc.env)
			}
			o, fs := serverFlags(t, tc.args...)
			if err := cli.Resolve(fs, &o.configFile); err != nil {
				t.Fatal(err)
			}
			if o.trustDomain != tc.want {
				t.Errorf("trust domain = %q, want %q", o.trustDomain, tc.want)
			}
		})
	}
}

func TestEnvName(t *testing.T) {
	for flag, want := range map[string]string{
		"data-dir":          "MESHCA_DATA_DIR",
		"max-request-bytes": "MESHCA_MAX_REQUEST_BYTES",
		"config":            "MESHCA_CONFIG",
	} {
		if got := cli.EnvName(flag); got != want {
			t.Errorf("cli.EnvName(%q) = %q, want %q", flag, got, want)
		}
	}
}

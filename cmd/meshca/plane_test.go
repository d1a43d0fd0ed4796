package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/plane"
	"github.com/meshca/meshca/sds/agent"
)

// startPlane runs the CA plane configured by `meshca server` flags, with
// extra attestors, until the test ends.
func startPlane(t *testing.T, args []string, extra ...attestor.Attestor) *plane.Plane {
	t.Helper()
	var o serverOptions
	cmd := &cobra.Command{}
	o.addFlags(cmd.Flags())
	if err := cmd.Flags().Parse(append([]string{"--log-level", "error"}, args...)); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.planeConfig(cmd)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Extra = extra
	p, err := plane.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop() })
	return p
}

// TestAuditCertFromLiveAgent reads the SVID that a running agent serves
// through its SDS and Workload API sockets with meshca audit cert.
func TestAuditCertFromLiveAgent(t *testing.T) {
	dir, err := os.MkdirTemp("", "audit") // short: Unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	id := spiffeid.RequireFromString("spiffe://example.org/ns/web/sa/frontend")
	p := startPlane(t, []string{"--data-dir", filepath.Join(dir, "ca"), "--trust-domain", "example.org",
		"--grpc-listen", "127.0.0.1:0", "--https-listen", "", "--monitoring-listen", ""},
		attestor.NewStaticTokens(map[string]spiffeid.ID{"web-token": id}))
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("web-token\n"), 0o600)
	var o agentOptions
	cmd := &cobra.Command{}
	o.addFlags(cmd.Flags())
	if err := cmd.Flags().Parse([]string{"--ca-addr", p.Addr("grpc").String(), "--ca-roots", p.Config().BundlePath(),
		"--trust-domain", "example.org", "--namespace", "web", "--service-account", "frontend", "--token-file", tokenFile,
		"--sds-socket", filepath.Join(dir, "s", "sds.sock"), "--workload-api-socket", filepath.Join(dir, "s", "wl.sock"),
		"--monitoring-listen", ""}); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.config()
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	deadline := time.Now().Add(20 * time.Second)
	for a.Manager().Current() == nil {
		if time.Now().After(deadline) {
			t.Fatal("no SVID")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, src := range [][]string{{"--sds", cfg.SDSSocket}, {"--workload-api", cfg.WorkloadSocket}} {
		code, stdout, stderr := runMeshca(t, append([]string{"audit", "cert", "--bundle", cfg.CARootsFile}, src...)...)
		if code != 0 || !strings.Contains(stdout, id.String()) || !strings.Contains(stdout, "verified against the bundle") {
			t.Errorf("audit cert %v: exit %d\n%s%s", src, code, stdout, stderr)
		}
	}
}

func TestAgentRefusesBadOptions(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "tok")
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"no identity", []string{"--ca-roots", "r", "--token-file", tok}, "--spiffe-id"},
		{"no roots", []string{"--spiffe-id", "spiffe://example.org/x", "--token-file", tok}, "--ca-roots is required"},
		{"bad SPIFFE ID", []string{"--spiffe-id", "web", "--ca-roots", "r", "--token-file", tok}, "scheme"},
		{"bad trust domain", []string{"--trust-domain", "a b", "--namespace", "n", "--service-account", "s"}, "--trust-domain"},
		{"two credentials", []string{"--spiffe-id", "spiffe://example.org/x", "--ca-roots", "r", "--token-file", tok, "--join-token-file", tok}, "choose one"},
		{"no credential", []string{"--spiffe-id", "spiffe://example.org/x", "--ca-roots", "r"}, "--token-file"},
		{"bad allowed ID", []string{"--spiffe-id", "spiffe://example.org/x", "--ca-roots", "r", "--token-file", tok, "--sds-tcp-allow", "x"}, "--sds-tcp-allow"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var o agentOptions
			cmd := &cobra.Command{}
			o.addFlags(cmd.Flags())
			if err := cmd.Flags().Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			_, err := o.config()
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %q", err, tc.msg)
			}
		})
	}
}

// TestAgentCAAddrFlag: --ca-addr keeps its one-address form and takes
// several replicas comma-separated or repeated.
func TestAgentCAAddrFlag(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"default", nil, []string{"127.0.0.1:15012"}},
		{"one address", []string{"--ca-addr", "meshca.meshca-system.svc:15012"}, []string{"meshca.meshca-system.svc:15012"}},
		{"comma-separated", []string{"--ca-addr", "ca-0:15012,ca-1:15012"}, []string{"ca-0:15012", "ca-1:15012"}},
		{"repeated", []string{"--ca-addr", "ca-0:15012", "--ca-addr", "ca-1:15012"}, []string{"ca-0:15012", "ca-1:15012"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var o agentOptions
			cmd := &cobra.Command{}
			o.addFlags(cmd.Flags())
			args := append([]string{"--spiffe-id", "spiffe://example.org/x", "--ca-roots", "r", "--token-file", "t"}, tc.args...)
			if err := cmd.Flags().Parse(args); err != nil {
				t.Fatal(err)
			}
			cfg, err := o.config()
			if err != nil || !slices.Equal(cfg.CAAddrs, tc.want) || cfg.CAAddr != "" {
				t.Fatalf("config() = %q %q, %v; want %q", cfg.CAAddr, cfg.CAAddrs, err, tc.want)
			}
		})
	}
}

package plane

import (
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/testlog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/pgenv"
	"github.com/meshca/meshca/internal/testca"
)

func TestStorageDSN(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := file("dsn", "postgres://meshca:pw@db/meshca\n", 0o600)
	tests := []struct {
		name    string
		s       Storage
		want    string // the DSN; "" for bbolt
		wantErr string
	}{
		{"default", Storage{}, "", ""},
		{"bolt", Storage{Store: "bolt"}, "", ""},
		{"postgres URL", Storage{Store: "postgres://meshca@db/meshca"}, "postgres://meshca@db/meshca", ""},
		{"postgresql URL", Storage{Store: "postgresql://meshca@db/meshca"}, "postgresql://meshca@db/meshca", ""},
		{"DSN file", Storage{DSNFile: good}, "postgres://meshca:pw@db/meshca", ""},
		{"DSN file, bolt flag left at its default", Storage{Store: "bolt", DSNFile: good}, "postgres://meshca:pw@db/meshca", ""},
		{"DSN file with --store postgres", Storage{Store: "postgres", DSNFile: good}, "postgres://meshca:pw@db/meshca", ""},
		{"key=value DSN file", Storage{DSNFile: file("kv", "host=db user=meshca password=pw", 0o600)}, "host=db user=meshca password=pw", ""},
		{"DSN file readable by others", Storage{DSNFile: file("open", "postgres://db/meshca", 0o644)}, "", "readable by others"},
		{"empty DSN file", Storage{DSNFile: file("empty", " \n", 0o600)}, "", "is empty"},
		{"missing DSN file", Storage{DSNFile: filepath.Join(dir, "nope")}, "", "no such file"},
		{"DSN file and a DSN", Storage{Store: "postgres://db/x", DSNFile: good}, "", "not a DSN too"},
		{"postgres without a file", Storage{Store: "postgres"}, "", "needs --store-dsn-file"},
		{"unknown kind, not echoed", Storage{Store: "mysql://root:hunter2@db"}, "", "must be bolt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.s.postgresDSN()
			switch {
			case tt.wantErr == "" && (err != nil || got != tt.want):
				t.Fatalf("got (%q, %v), want %q", got, err, tt.want)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("got (%q, %v), want an error with %q", got, err, tt.wantErr)
			case err != nil && strings.Contains(err.Error(), "hunter2"):
				t.Errorf("the error shows the password: %v", err)
			}
		})
	}
}

// TestPostgresReplicas: two planes started together on one PostgreSQL
// database, under one Istio cacerts root, share the root and the issuance
// log, and each signs with its own intermediate, recorded with its name,
// its key nowhere in the database; while the database is down a CSR is
// refused with Unavailable and /readyz fails, and both recover when it is
// back. The password is in no log line. A self-signed root, whose key
// would be in the database, is refused.
func TestPostgresReplicas(t *testing.T) {
	srv := pgenv.Start(t)
	ctx := context.Background()
	dsn := srv.NewDatabase(t)
	dsnFile := filepath.Join(t.TempDir(), "dsn")
	if err := os.WriteFile(dsnFile, []byte(dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	web := spiffeid.RequireFromPath(td, "/ns/shop/sa/web")
	c := testca.NewIstioCACerts(t, testca.IstioOptions{CACert: func(tmpl *x509.Certificate) { tmpl.MaxPathLen, tmpl.MaxPathLenZero = 1, false }})
	cacerts := t.TempDir()
	c.Write(t, cacerts)
	parent, err := ca.LoadCACerts(cacerts, time.Now(), ca.CACertsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Start(ctx, Config{TrustDomain: td, DataDir: t.TempDir(), Storage: Storage{Store: dsn}, Kubernetes: Kubernetes{Deny: []string{}}}); err == nil ||
		!strings.Contains(err.Error(), "need a root whose key no replica keeps") {
		t.Fatalf("a self-signed root on a shared store: %v", err)
	}
	var logs testlog.Buffer
	// Both start at once on the empty database: one creates the CA, the
	// other loses the compare-and-swap and takes its state.
	planes := make([]*Plane, 2)
	var wg sync.WaitGroup
	for i, s := range []Storage{{DSNFile: dsnFile}, {Store: dsn}} {
		cfg := Config{TrustDomain: td, DataDir: t.TempDir(), Storage: s, Parent: parent,
			GRPCAddr: "127.0.0.1:0", MonitorAddr: "127.0.0.1:0", Kubernetes: Kubernetes{Deny: []string{}},
			Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Extra:  []attestor.Attestor{attestor.NewStaticTokens(map[string]spiffeid.ID{"web-token": web})}}
		wg.Go(func() {
			p, err := Start(ctx, cfg)
			if err != nil {
				t.Errorf("replica %d: %v", i, err)
				return
			}
			t.Cleanup(func() { p.Stop() })
			planes[i] = p
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	a, b := planes[0], planes[1]
	if !bytes.Equal(a.Authority().RootsPEM(), b.Authority().RootsPEM()) {
		t.Fatal("the replicas have different roots")
	}
	if a.Authority().SigningCertificate().Equal(b.Authority().SigningCertificate()) {
		t.Fatal("the replicas share an intermediate")
	}
	status, err := a.Authority().Status(ctx)
	if err != nil || len(status.Intermediates) != 2 || status.Intermediates[0].Replica == "" || status.Intermediates[0].Replica == status.Intermediates[1].Replica {
		t.Fatalf("status: %+v, %v; want each replica's intermediate with its name", status.Intermediates, err)
	}
	leaf, err := sign(t, a, web, "web-token", nil)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := b.Authority().Issuances(ctx, store.IssuanceFilter{SPIFFEID: web.String()})
	if err != nil || len(recs) != 1 || recs[0].Serial != leaf.Leaf.SerialNumber.Text(16) {
		t.Fatalf("b's log: %+v, %v; want a's issuance", recs, err)
	}
	metrics := monitor(t, b, "/metrics")
	if !strings.Contains(metrics, "meshca_store_commit_duration_seconds") || strings.Contains(metrics, "checkpoint") {
		t.Errorf("/metrics with PostgreSQL: want the commit metrics and no journal checkpoints")
	}

	ready := func(p *Plane) bool { return strings.HasPrefix(monitor(t, p, "/readyz"), "ok") }
	for _, p := range []*Plane{a, b} {
		if !ready(p) {
			t.Fatal("a replica is not ready")
		}
	}
	srv.Stop(t)
	_, err = sign(t, b, web, "web-token", nil)
	wantCode(t, "a CSR while PostgreSQL is down", err, codes.Unavailable, "temporarily unavailable")
	for _, p := range []*Plane{a, b} {
		clocktest.Eventually(t, "not ready while PostgreSQL is down", func() bool { return !ready(p) })
	}
	srv.Restart(t)
	for _, p := range []*Plane{a, b} {
		clocktest.Eventually(t, "ready once PostgreSQL is back", func() bool { return ready(p) })
	}
	if _, err := sign(t, b, web, "web-token", nil); err != nil {
		t.Fatalf("a CSR once PostgreSQL is back: %v", err)
	}
	if strings.Contains(logs.String(), srv.Password) {
		t.Error("the password is in the logs")
	}
	if !strings.Contains(logs.String(), "PostgreSQL store open") {
		t.Errorf("no log line says which store is open:\n%s", logs.String())
	}
}

// monitor returns the body of a GET of path on p's monitoring listener.
func monitor(t *testing.T, p *Plane, path string) string {
	t.Helper()
	_, body := get(t, "http://"+p.Addr("monitor").String()+path)
	return body
}

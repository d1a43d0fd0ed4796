package server_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
	"github.com/meshca/meshca/ca/store/pgstore"
	"github.com/meshca/meshca/internal/pgenv"
)

// The issuance benchmarks run side by side in one process so their ratios
// are meaningful on a shared, noisy machine:
//
//	Bare       the standard library alone: PEM decode, parse CSR, check its
//	           signature, x509.CreateCertificate, PEM encode — the floor.
//	Sign/mem   ca.Authority.Sign with an in-memory store: everything meshca
//	           adds in CPU (checks, template, validator, metrics, chain).
//	Sign/bolt  the same with the durable store: each record journaled
//	           (group commit, fdatasync before Sign returns) and
//	           checkpointed into the bbolt file; the store is closed inside
//	           the measurement, so the final checkpoint is counted too.
//	Sign/journal  Sign/bolt without checkpoints: the request path alone.
//	GRPC       a full CreateCertificate call over TLS on 127.0.0.1.
//
// Run with: make bench (go test -run "^$" -bench Issuance -benchmem ./ca/server/)

func benchCSR(b *testing.B, id spiffeid.ID) []byte {
	return csrFor(b, newKey(b), id)
}

// bareIssue is the floor: what any Go CA must do for one CSR.
func bareIssue(csrPEM []byte, parent *x509.Certificate, key crypto.Signer, id *url.URL) error {
	block, _ := pem.Decode(csrPEM)
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return err
	}
	if err := csr.CheckSignature(); err != nil {
		return err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, NotBefore: now, NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{id}, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, csr.PublicKey, key)
	if err != nil {
		return err
	}
	_ = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return nil
}

func bareCA(b *testing.B) (*x509.Certificate, crypto.Signer) {
	key := newKey(b)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(7 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		b.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

// nopStore keeps nothing; it isolates the CPU cost of Sign from storage.
type nopStore struct{ store.Store }

func (nopStore) RecordIssuance(context.Context, store.Issuance) error { return nil }

// storeCounter counts the store's group commits and checkpoints.
type storeCounter struct{ commits, checkpoints atomic.Int64 }

func (c *storeCounter) Committed(int, time.Duration)    { c.commits.Add(1) }
func (c *storeCounter) Checkpointed(int, time.Duration) { c.checkpoints.Add(1) }

// report adds the store's work per operation to b's results.
func (c *storeCounter) report(b *testing.B) {
	b.ReportMetric(float64(c.commits.Load())/float64(b.N), "commits/op")
	b.ReportMetric(float64(c.checkpoints.Load()), "checkpoints")
}

// benchAuthority keeps its CA state in a real store opened with opts;
// durable says whether issuance records go there too or are dropped.
func benchAuthority(b *testing.B, durable bool, opts boltstore.Options) (*ca.Authority, *boltstore.Store, *storeCounter) {
	counter := new(storeCounter)
	opts.Metrics = counter
	bolt, err := boltstore.Open(filepath.Join(b.TempDir(), "meshca.db"), opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bolt.Close() })
	var st store.Store = bolt
	if !durable {
		st = nopStore{bolt}
	}
	a, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Store: st})
	if err != nil {
		b.Fatal(err)
	}
	return a, bolt, counter
}

// benchCallers × GOMAXPROCS concurrent callers in the durable benchmarks:
// enough that group commit can batch while one fsync is in flight, as under
// a rotation storm of a large fleet.
const benchCallers = 64

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runParallel runs op from callers×GOMAXPROCS goroutines and reports, beside
// ns/op (wall time per operation over all cores), cpu-ns/op: the CPU time the
// whole process spent per operation, which is what the issuance budget is
// about and does not depend on how well the goroutines kept the cores busy.
func runParallel(b *testing.B, callers int, op func() error) {
	runParallelThen(b, callers, op, nil)
}

// runParallelThen is runParallel with finish (if not nil) run after the
// operations and counted in cpu-ns/op: work they left behind, such as the
// store's last checkpoint.
func runParallelThen(b *testing.B, callers int, op, finish func() error) {
	b.SetParallelism(callers)
	start := cpuTime(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	if finish != nil {
		if err := finish(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}

func BenchmarkIssuance(b *testing.B) {
	csr := benchCSR(b, fooID)
	id := attestor.Identity{ID: fooID, Kind: "bench"}
	ctx := context.Background()

	// One goroutine: time per issuance is CPU per issuance.
	b.Run("Bare", func(b *testing.B) {
		parent, key := bareCA(b)
		u := fooID.URL()
		for b.Loop() {
			if err := bareIssue(csr, parent, key, u); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Sign/mem", func(b *testing.B) {
		a, _, _ := benchAuthority(b, false, boltstore.Options{})
		for b.Loop() {
			if _, err := a.Sign(ctx, ca.SignRequest{CSR: csr, Identity: id}); err != nil {
				b.Fatal(err)
			}
		}
	})

	// Many goroutines on all cores.
	b.Run("Bare/parallel", func(b *testing.B) {
		parent, key := bareCA(b)
		u := fooID.URL()
		runParallel(b, benchCallers, func() error { return bareIssue(csr, parent, key, u) })
	})
	b.Run("Sign/mem/parallel", func(b *testing.B) {
		a, _, _ := benchAuthority(b, false, boltstore.Options{})
		runParallel(b, benchCallers, func() error {
			_, err := a.Sign(ctx, ca.SignRequest{CSR: csr, Identity: id})
			return err
		})
	})
	b.Run("Sign/bolt/parallel", func(b *testing.B) {
		a, st, counter := benchAuthority(b, true, boltstore.Options{})
		runParallelThen(b, benchCallers, func() error {
			_, err := a.Sign(ctx, ca.SignRequest{CSR: csr, Identity: id})
			return err
		}, st.Close) // the last checkpoint
		counter.report(b)
	})
	// The request path alone: no checkpoint runs while measured.
	b.Run("Sign/journal/parallel", func(b *testing.B) {
		a, _, counter := benchAuthority(b, true, boltstore.Options{CheckpointRecords: 1 << 30, CheckpointInterval: time.Hour})
		runParallel(b, benchCallers, func() error {
			_, err := a.Sign(ctx, ca.SignRequest{CSR: csr, Identity: id})
			return err
		})
		counter.report(b)
	})
	// The durable record on PostgreSQL (internal/pgenv, on the same cores
	// and disk): cpu-ns/op is meshca's process only, the server's CPU is
	// reported apart (pg-cpu-ns/op); there are no checkpoints.
	b.Run("Sign/postgres/parallel", func(b *testing.B) {
		srv := pgenv.Start(b)
		st, err := pgstore.Open(ctx, srv.NewDatabase(b), pgstore.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		a, err := ca.New(ctx, ca.Config{TrustDomain: td, Store: st})
		if err != nil {
			b.Fatal(err)
		}
		pgCPU := func() time.Duration {
			d, err := srv.CPUTime()
			if err != nil {
				b.Fatal(err)
			}
			return d
		}
		pg0 := pgCPU()
		runParallel(b, benchCallers, func() error {
			_, err := a.Sign(ctx, ca.SignRequest{CSR: csr, Identity: id})
			return err
		})
		b.ReportMetric(float64(pgCPU()-pg0)/float64(b.N), "pg-cpu-ns/op")
	})
	// One connection carries every caller, as it always has here: the
	// server's default of four calls open per connection would hold the
	// rest in the client and measure that instead.
	b.Run("GRPC/parallel", func(b *testing.B) {
		p := startPlaneWith(b, filepath.Join(b.TempDir(), "meshca.db"), func(c *server.Config) {
			c.MaxStreamsPerConnection = benchCallers * runtime.GOMAXPROCS(0)
		})
		c := grpcClient(b, p, nil)
		runParallel(b, benchCallers, func() error {
			_, err := c.Sign(ctx, csr, 0, fooToken)
			return err
		})
	})
}

package ca_test

import (
	"context"
	"testing"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
	"github.com/meshca/meshca/internal/testca"
)

// BenchmarkSignByParent compares the cost of one Sign (CSR check,
// signature, validator, in-memory record) with meshca's P-256 intermediate
// under a cacerts ca-cert, and with ca-cert.pem's own key in direct mode:
// P-256, and RSA-4096 as Istio's tools/certs makes it. The sub-benchmarks
// run in one process, so their ratios hold on a busy machine.
func BenchmarkSignByParent(b *testing.B) {
	for _, bc := range []struct {
		name    string
		rsaBits int
		direct  bool
	}{
		{"intermediate-p256", 0, false},
		{"direct-p256", 0, true},
		{"direct-rsa4096", 4096, true},
	} {
		o := testca.IstioOptions{Now: t0, RSABits: bc.rsaBits} // pathlen 0: direct
		if !bc.direct {
			o.CACert = noPathLen
		}
		dir := b.TempDir()
		testca.NewIstioCACerts(b, o).Write(b, dir)
		parent, err := ca.LoadCACerts(dir, t0, ca.CACertsOptions{})
		if err != nil {
			b.Fatal(err)
		}
		a := newAuthority(b, storetest.NewMem(), clocktest.New(t0), func(cfg *ca.Config) { cfg.Parent = parent })
		req := ca.SignRequest{CSR: csrPEM(b, p256(b), fooCSR()), Identity: identity(fooID)}
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := a.Sign(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package adminclient

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
)

// TestStatusTableFederation: `meshca ca status` lists each federated trust
// domain on one line (source, last refresh and change, sequence, roots by
// serial, JWT keys), and nothing about federation without it.
func TestStatusTableFederation(t *testing.T) {
	at := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		fed  []ca.FederatedStatus
		want []string // lines, or "" for none of the section
	}{
		{name: "no federation", want: nil},
		{name: "two trust domains", fed: []ca.FederatedStatus{
			{TrustDomain: "b.test", Source: "endpoint", RefreshedAt: at, ChangedAt: at.Add(-time.Hour), Sequence: 7,
				X509Authorities: []ca.CertStatus{{Serial: "0a"}, {Serial: "0b"}}, JWTKeyIDs: []string{"k1"}},
			{TrustDomain: "c.test", Source: "bootstrap", Error: "unable to parse"},
		}, want: []string{
			"FEDERATED TRUST DOMAIN\tSOURCE\tREFRESHED\tCHANGED\tSEQUENCE\tX.509 AUTHORITIES (SERIAL)\tJWT KEYS",
			"b.test\tendpoint\t2026-11-01T12:00:00Z\t2026-11-01T11:00:00Z\t7\t0a,0b\t1",
			"c.test\tbootstrap\t-\t-\t0\tunreadable: unable to parse\t0",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			Status{&ca.Status{TrustDomain: "a.test", Federation: tt.fed}}.WriteTable(&buf)
			out := buf.String()
			if tt.want == nil {
				if strings.Contains(out, "FEDERATED") {
					t.Fatalf("a federation section without federation:\n%s", out)
				}
				return
			}
			for _, line := range tt.want {
				if !strings.Contains(out, line+"\n") {
					t.Errorf("missing line %q in:\n%s", line, out)
				}
			}
		})
	}
}

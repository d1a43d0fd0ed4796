package plane

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
)

// TestStoreMetrics: the durable record's group commits are on /metrics
// once a certificate was issued, beside the signing gate's gauges.
func TestStoreMetrics(t *testing.T) {
	web := spiffeid.RequireFromPath(td, "/ns/shop/sa/web")
	p, err := Start(context.Background(), Config{TrustDomain: td, DataDir: t.TempDir(),
		GRPCAddr: "127.0.0.1:0", MonitorAddr: "127.0.0.1:0", Kubernetes: Kubernetes{Deny: []string{}},
		Extra: []attestor.Attestor{attestor.NewStaticTokens(map[string]spiffeid.ID{"web-token": web})}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop() })
	if _, err := sign(t, p, web, "web-token", nil); err != nil {
		t.Fatal(err)
	}
	r, err := http.Get("http://" + p.Addr("monitor").String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	for _, want := range []string{"meshca_store_commit_records_count 1\n", "meshca_store_commit_records_sum 1\n",
		"meshca_store_commit_duration_seconds_count 1\n", "meshca_csr_in_flight 0\n", "meshca_csr_shed_total 0\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
		}
	}
}

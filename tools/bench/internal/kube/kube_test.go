package kube

import "testing"

func TestParseRequestTotals(t *testing.T) {
	text := `# HELP apiserver_request_total Counter of apiserver requests
apiserver_request_total{code="201",component="apiserver",dry_run="",group="authentication.k8s.io",resource="tokenreviews",scope="cluster",subresource="",verb="POST",version="v1"} 40
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="serviceaccounts",scope="resource",subresource="token",verb="POST",version="v1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="",scope="",subresource="/metrics",verb="GET",version=""} 3
apiserver_request_total{code="400",component="apiserver",dry_run="",group="authentication.k8s.io",resource="tokenreviews",scope="cluster",subresource="",verb="POST",version="v1"} 2
apiserver_request_totalx{resource="x"} 9
`
	got := parseRequestTotals(text)
	for _, tc := range []struct {
		name     string
		resource string
		want     float64
	}{
		{"sums codes", "tokenreviews", 42},
		{"subresource under its resource", "serviceaccounts", 7},
		{"non-resource", "", 3},
		{"other metric ignored", "x", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got[tc.resource] != tc.want {
				t.Fatalf("%q = %v, want %v (all: %v)", tc.resource, got[tc.resource], tc.want, got)
			}
		})
	}
}

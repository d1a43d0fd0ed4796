// Package deploycheck checks what deploy/ installs, against the real
// kube-apiserver of `make testenv`; `make deploy-check` runs it.
//
//   - Render renders the Helm chart deploy/charts/meshca with the Helm Go SDK
//     (as `helm template` does) for each Variant; the test compares the
//     output with the plain manifests in deploy/manifests, the golden files
//     (`go test -run TestGolden -update` rewrites them).
//   - The rendered manifests and the examples in deploy/examples are applied
//     with server-side dry-run to a real kube-apiserver (with minimal
//     Prometheus Operator CRDs from testdata/crds), so the API server's own
//     validation and defaulting accept every object.
//   - The chart's RBAC is proven enough and no more: the real `meshca
//     server`, built by the test, runs with the arguments the chart renders
//     and a kubeconfig that impersonates the chart's ServiceAccount, so it
//     holds only the chart's ClusterRole and Role; the test observes its
//     TokenReviews, informers, bundle ConfigMaps, ClusterTrustBundle, Lease
//     and its answer to a PodCertificateRequest a node makes, and asks the API server (SubjectAccessReview) about what the
//     ServiceAccount must and must not be allowed.
//
// It is its own module so that Helm stays out of meshca's go.mod; it
// depends on meshca through a replace directive.
package deploycheck

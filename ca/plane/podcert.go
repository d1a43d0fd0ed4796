package plane

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/podcert"
	"github.com/meshca/meshca/internal/kubeclient"
	"github.com/meshca/meshca/internal/metrics"
)

// PodCertificates makes meshca a Kubernetes pod certificate signer
// (ca/podcert): it answers the PodCertificateRequests that name Signer,
// through the Kubernetes client of Config.Kubernetes (its kubeconfig, else
// the in-cluster configuration, and its rate limit). With leader election
// only the leader answers.
type PodCertificates struct {
	// Signer is the signer name, <domain>/<path> (e.g. meshca.io/spiffe);
	// "" answers none. Unless Bundles.ClusterTrustBundleSigner names
	// another, the signer-linked ClusterTrustBundle is published for it.
	Signer string
}

// AddFlags registers the flags of `meshca server` for pod certificates into
// p (docs/configuration.md lists them).
func (p *PodCertificates) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&p.Signer, "pod-certificate-signer", "", "signer name (domain/path, e.g. meshca.io/spiffe) whose Kubernetes PodCertificateRequests meshca answers; also the default --cluster-trust-bundle-signer; empty disables")
}

// podCertificates is the pod certificate signer, nil without a signer name;
// ids applies the allow and deny lists.
func (c *Config) podCertificates(auth *ca.Authority, ids podcert.Identities, reg prometheus.Registerer) (*podcert.Controller, error) {
	if c.PodCertificates.Signer == "" {
		return nil, nil
	}
	k := c.Kubernetes
	client, err := kubeclient.Config{Kubeconfig: k.Kubeconfig, QPS: k.QPS, Burst: k.Burst, UserAgent: c.UserAgent}.Clientset()
	if err != nil {
		return nil, fmt.Errorf("pod certificates: %w", err)
	}
	return podcert.New(podcert.Config{Client: client, SignerName: c.PodCertificates.Signer, Authority: auth, Identities: ids,
		MaxTTL: c.MaxTTL, Clock: c.Clock, Logger: c.Logger, Metrics: metrics.NewPodCert(reg)})
}

package plane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	cabundle "github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/bundle/clustertrustbundle"
	"github.com/meshca/meshca/ca/bundle/configmap"
	"github.com/meshca/meshca/ca/bundle/endpoint"
	"github.com/meshca/meshca/internal/kubeclient"
	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/internal/pki"
)

// bundles are the trust bundle's publishers (ca/bundle) a plane runs.
type bundles struct {
	// endpoint serves on every replica: it only reads.
	endpoint *endpoint.Server
	// writers write Kubernetes objects, by what they write: with leader
	// election only the leader runs them.
	writers map[string]func(context.Context) error
}

// startBundles builds the publishers Config.Bundles asks for and starts
// the bundle endpoint (its listener, and its first serving certificate);
// the caller runs the writers.
func (c *Config) startBundles(auth *ca.Authority, reg prometheus.Registerer) (*bundles, error) {
	b := c.Bundles
	m := metrics.NewBundle(reg)
	out := &bundles{writers: map[string]func(context.Context) error{}}
	if b.ConfigMap != "" || b.ClusterTrustBundleSigner != "" {
		client, err := c.bundleClient()
		if err != nil {
			return nil, err
		}
		if client != nil && b.ConfigMap != "" {
			p, err := configmap.New(configmap.Config{Client: client, Source: auth, Name: b.ConfigMap, Namespaces: b.ConfigMapNamespaces,
				TakeOverIstio: b.TakeOverIstio, SyncInterval: b.SyncInterval, Resync: b.Resync, Clock: c.Clock, Logger: c.Logger, Metrics: m})
			if err != nil {
				return nil, err
			}
			out.writers["bundle ConfigMaps"] = p.Run
		}
		if client != nil && b.ClusterTrustBundleSigner != "" {
			p, err := clustertrustbundle.New(clustertrustbundle.Config{Client: client, Source: auth, SignerName: b.ClusterTrustBundleSigner,
				Suffix: c.TrustDomain.Name(), SyncInterval: b.SyncInterval, Resync: b.Resync, Clock: c.Clock, Logger: c.Logger, Metrics: m})
			if err != nil {
				return nil, err
			}
			out.writers["bundle ClusterTrustBundle"] = p.Run
		}
	}
	if b.EndpointAddr == "" {
		return out, nil
	}
	var id spiffeid.ID
	if b.EndpointSPIFFEID != "" {
		var err error
		if id, err = spiffeid.FromString(b.EndpointSPIFFEID); err != nil {
			return nil, fmt.Errorf("bundle endpoint SPIFFE ID: %w", err)
		}
	}
	ep, err := endpoint.New(endpoint.Config{Addr: b.EndpointAddr, TrustDomain: c.TrustDomain, Source: auth, RefreshHint: b.RefreshHint,
		Profile: b.EndpointProfile, CertFile: b.EndpointCertFile, KeyFile: b.EndpointKeyFile, ID: id, Issuer: selfIssuer{auth},
		Clock: c.Clock, Logger: c.Logger, Metrics: m})
	if err != nil {
		return nil, err
	}
	if err := ep.Start(); err != nil {
		return nil, err
	}
	out.endpoint = ep
	return out, nil
}

// bundleClient is the client of the ConfigMap and ClusterTrustBundle
// publishers: Kubernetes' kubeconfig and rate limit (--k8s-qps). Without a
// kubeconfig outside a cluster it is nil, and the ConfigMap, on by
// default, is not published (logged); a ClusterTrustBundle, asked for
// explicitly, is an error.
func (c *Config) bundleClient() (kubernetes.Interface, error) {
	k := c.Kubernetes
	if k.Kubeconfig == "" {
		if _, err := rest.InClusterConfig(); errors.Is(err, rest.ErrNotInCluster) {
			if c.Bundles.ClusterTrustBundleSigner != "" {
				return nil, errors.New("plane: a ClusterTrustBundle needs the Kubernetes API: not in a cluster, and no kubeconfig")
			}
			c.Logger.Info("not in a Kubernetes cluster and no kubeconfig: the trust bundle ConfigMap is not published", "configmap", c.Bundles.ConfigMap)
			return nil, nil
		}
	}
	return kubeclient.Config{Kubeconfig: k.Kubeconfig, QPS: k.QPS, Burst: k.Burst, UserAgent: c.UserAgent}.Clientset()
}

// selfIssuer issues the bundle endpoint's https_spiffe SVIDs with the CA's
// own signing, so that each is checked and recorded in the issuance log
// (credential kind "self") like any other.
type selfIssuer struct{ auth *ca.Authority }

// IssueSVID implements endpoint.SVIDIssuer.
func (s selfIssuer) IssueSVID(ctx context.Context, id spiffeid.ID, csr []byte) ([]*x509.Certificate, error) {
	iss, err := s.auth.Sign(ctx, ca.SignRequest{CSR: csr, Identity: attestor.Identity{ID: id, Kind: "self", Subject: "bundle-endpoint"}})
	if err != nil {
		return nil, err
	}
	chain := make([]*x509.Certificate, 0, len(iss.ChainPEM))
	for _, p := range iss.ChainPEM {
		cert, err := pki.ParseCertificate(p)
		if err != nil {
			return nil, err
		}
		chain = append(chain, cert)
	}
	return chain, nil
}

// The publishers hear of a root rotation's steps at once, not at their next
// poll.
var _ cabundle.Notifier = (*ca.Authority)(nil)

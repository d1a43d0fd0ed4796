// Package istioca runs Istio's CA server as istiod does: the
// IstioCertificateService handler of istio.io/istio/security/pkg/server/ca
// over Istio's own IstioCA (a plugged-in intermediate, as with istiod's
// cacerts), with istiod's authenticators in istiod's order: the client
// certificate the handshake verified, then Kubernetes tokens checked with one
// TokenReview each through client-go at istiod's limits.
package istioca

import (
	"crypto/tls"
	"fmt"
	"path/filepath"
	"time"

	meshconfig "istio.io/api/mesh/v1alpha1"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/pki/ca"
	caserver "istio.io/istio/security/pkg/server/ca"
	"istio.io/istio/security/pkg/server/ca/authenticate"
	"istio.io/istio/security/pkg/server/ca/authenticate/kubeauth"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshca/meshca/tools/bench/internal/peer"
	"github.com/meshca/meshca/tools/bench/internal/pki"
)

// istiod's defaults: workload certificates of 24 h, at most 90 days, and
// client-go at 80 QPS with a burst of 160 (pilot-discovery's
// --kubernetesApiQPS and --kubernetesApiBurst).
const (
	defaultCertTTL = 24 * time.Hour
	maxCertTTL     = 90 * 24 * time.Hour
	DefaultQPS     = 80
	DefaultBurst   = 160
	clusterID      = "Kubernetes"
)

// Config is how the server runs.
type Config struct {
	// Dir is the CA directory (package pki) and Listen the address.
	Dir, Listen string
	// Kubeconfig, if set, enables the Kubernetes token authenticator
	// against that API server.
	Kubeconfig string
	// QPS and Burst are client-go's limits for the TokenReviews.
	QPS   float32
	Burst int
}

// fixedMesh is a mesh.Holder with Istio's default mesh configuration
// (trust domain cluster.local).
type fixedMesh struct{ m *meshconfig.MeshConfig }

func (f fixedMesh) Mesh() *meshconfig.MeshConfig { return f.m }

var _ mesh.Holder = fixedMesh{}

// Run serves until SIGTERM.
func Run(cfg Config) error {
	opts, err := ca.NewPluggedCertIstioCAOptions(ca.SigningCAFileBundle{
		RootCertFile:    filepath.Join(cfg.Dir, pki.RootCertFile),
		CertChainFiles:  []string{filepath.Join(cfg.Dir, pki.CertChainFile)},
		SigningCertFile: filepath.Join(cfg.Dir, pki.CACertFile),
		SigningKeyFile:  filepath.Join(cfg.Dir, pki.CAKeyFile),
	}, defaultCertTTL, maxCertTTL, 2048)
	if err != nil {
		return fmt.Errorf("istioca: %w", err)
	}
	istioCA, err := ca.NewIstioCA(opts)
	if err != nil {
		return fmt.Errorf("istioca: %w", err)
	}
	auths := []security.Authenticator{&authenticate.ClientCertAuthenticator{}}
	if cfg.Kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return fmt.Errorf("istioca: %w", err)
		}
		rc.QPS, rc.Burst = cfg.QPS, cfg.Burst
		kc, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return fmt.Errorf("istioca: %w", err)
		}
		auths = append(auths, kubeauth.NewKubeJWTAuthenticator(
			fixedMesh{mesh.DefaultMeshConfig()}, kc, cluster.ID(clusterID), nil, nil))
	}
	srv, err := caserver.New(istioCA, maxCertTTL, auths, nil)
	if err != nil {
		return fmt.Errorf("istioca: %w", err)
	}
	// istiod asks for a client certificate but accepts connections without
	// one (token callers).
	return peer.Serve(peer.Config{Dir: cfg.Dir, Listen: cfg.Listen, ClientAuth: tls.VerifyClientCertIfGiven}, srv.Register)
}

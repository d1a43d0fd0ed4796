package bundle

import (
	"time"

	"github.com/spf13/pflag"
)

// DefaultConfigMap is the --bundle-configmap default.
const DefaultConfigMap = "meshca-root-cert"

// The bundle endpoint's profiles, as the SPIFFE federation specification
// names them: https_web serves a certificate from files, which peers verify
// with web PKI roots; https_spiffe serves an X509-SVID of this CA, which
// peers verify against a bundle of this trust domain they already hold.
const (
	ProfileWeb    = "https_web"
	ProfileSPIFFE = "https_spiffe"
)

// Defaults of Config's durations.
const (
	DefaultRefreshHint = 5 * time.Minute
	DefaultResync      = 5 * time.Minute
)

// Config says where `meshca server` publishes its trust bundle. The zero
// value publishes it nowhere; the flags (AddFlags) default to a ConfigMap
// in every namespace.
type Config struct {
	// ConfigMap names the ConfigMap written in every selected namespace,
	// with the bundle under the key root-cert.pem; "" writes none. Set it to
	// istio-ca-root-cert to stand in for istiod.
	ConfigMap string
	// ConfigMapNamespaces are the namespaces (path.Match globs) that get
	// it; empty: every namespace.
	ConfigMapNamespaces []string
	// TakeOverIstio lets meshca write istio-ca-root-cert ConfigMaps that
	// are not labelled as its own (istiod's), once istiod no longer writes
	// them. Only with ConfigMap istio-ca-root-cert.
	TakeOverIstio bool
	// ClusterTrustBundleSigner is the signer name (domain/path, e.g.
	// meshca.io/spiffe) of the signer-linked ClusterTrustBundle
	// <domain>:<path>:<trust domain> written with the bundle; "" writes none.
	ClusterTrustBundleSigner string
	// EndpointAddr is where the SPIFFE bundle endpoint listens; "" serves
	// none.
	EndpointAddr string
	// EndpointProfile is ProfileSPIFFE (default) or ProfileWeb.
	EndpointProfile string
	// EndpointCertFile and EndpointKeyFile are the https_web serving
	// certificate (chain) and key, reloaded when they change.
	EndpointCertFile, EndpointKeyFile string
	// EndpointSPIFFEID is the https_spiffe endpoint's SPIFFE ID; default
	// spiffe://<trust domain>/meshca/bundle-endpoint.
	EndpointSPIFFEID string
	// RefreshHint is the spiffe_refresh_hint served: how often federated
	// peers should fetch the bundle again. Default DefaultRefreshHint.
	RefreshHint time.Duration
	// SyncInterval is how often the bundle is compared with the one
	// published. Default DefaultSyncInterval.
	SyncInterval time.Duration
	// Resync is how often every ConfigMap and ClusterTrustBundle is checked
	// again even without an event. Default DefaultResync.
	Resync time.Duration
}

// AddFlags registers the flags of `meshca server` for the trust bundle's
// distribution into c (docs/configuration.md lists them).
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.ConfigMap, "bundle-configmap", DefaultConfigMap, "ConfigMap written in every namespace with the trust bundle under root-cert.pem (istio-ca-root-cert stands in for istiod); empty disables")
	fs.StringSliceVar(&c.ConfigMapNamespaces, "bundle-configmap-namespaces", nil, "namespaces that get the bundle ConfigMap (glob patterns allowed); empty: all")
	fs.BoolVar(&c.TakeOverIstio, "bundle-configmap-take-over-istio", false, "with --bundle-configmap=istio-ca-root-cert, also overwrite the ConfigMaps istiod wrote (stop istiod's CA first)")
	fs.StringVar(&c.ClusterTrustBundleSigner, "cluster-trust-bundle-signer", "", "signer name (domain/path) of the signer-linked ClusterTrustBundle written with the bundle; empty disables")
	fs.StringVar(&c.EndpointAddr, "bundle-endpoint-listen", "", "SPIFFE bundle endpoint address (federation); empty disables")
	fs.StringVar(&c.EndpointProfile, "bundle-endpoint-profile", ProfileSPIFFE, "bundle endpoint profile: https_spiffe (an SVID of this CA) or https_web (certificate files)")
	fs.StringVar(&c.EndpointCertFile, "bundle-endpoint-cert-file", "", "https_web: serving certificate chain (PEM), reloaded when it changes")
	fs.StringVar(&c.EndpointKeyFile, "bundle-endpoint-key-file", "", "https_web: serving key (PEM), reloaded when it changes")
	fs.StringVar(&c.EndpointSPIFFEID, "bundle-endpoint-spiffe-id", "", "https_spiffe: the endpoint's SPIFFE ID (default spiffe://<trust-domain>/meshca/bundle-endpoint)")
	fs.DurationVar(&c.RefreshHint, "bundle-refresh-hint", DefaultRefreshHint, "spiffe_refresh_hint served by the bundle endpoint")
	fs.DurationVar(&c.SyncInterval, "bundle-sync-interval", DefaultSyncInterval, "how often the trust bundle is compared with the one published")
	fs.DurationVar(&c.Resync, "bundle-resync", DefaultResync, "how often every bundle ConfigMap and ClusterTrustBundle is checked again without an event")
}

package envoy

import (
	"cmp"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/sds"
)

// Resource names Envoy asks for. Istio's bootstrap uses DefaultName and
// RootCAName; SPIRE's uses the workload's SPIFFE ID and the trust domain's
// ID ("spiffe://example.org"), and with SPIFFE validation AllName. All are
// published (AllName only with Config.SPIFFEValidator).
const (
	// DefaultName is the workload's certificate chain and key.
	DefaultName = "default"
	// RootCAName is the workload's own trust domain's roots.
	RootCAName = "ROOTCA"
	// AllName is every trusted trust domain's roots in one SPIFFE
	// validator config, as SPIRE's agent serves it ("ALL").
	AllName = "ALL"
)

// SPIFFEValidatorName is the name of Envoy's SPIFFE certificate validator
// extension, which the validation contexts name with Config.SPIFFEValidator.
const SPIFFEValidatorName = "envoy.tls.cert_validator.spiffe"

// secrets returns the resources for svid, by name: its chain and key, and
// a validation context per trust bundle (see validationContexts).
func secrets(svid *sds.SVID, spiffeValidator bool) (map[string]*tlsv3.Secret, error) {
	if len(svid.Certificates) == 0 {
		return nil, fmt.Errorf("envoy: SVID %s has no certificate", svid.ID)
	}
	if len(svid.Roots) == 0 {
		return nil, fmt.Errorf("envoy: SVID %s has no roots", svid.ID)
	}
	der, err := x509.MarshalPKCS8PrivateKey(svid.Key)
	if err != nil {
		return nil, fmt.Errorf("envoy: encoding the key of %s: %w", svid.ID, err)
	}
	chain := certsPEM(svid.Certificates)
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})

	cert := func(name string) *tlsv3.Secret {
		return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(chain),
			PrivateKey:       inline(key),
		}}}
	}
	own := svid.ID.TrustDomain()
	out, err := validationContexts(own, trustBundles(svid, spiffeValidator), spiffeValidator)
	if err != nil {
		return nil, err
	}
	out[DefaultName] = cert(DefaultName)
	// A trust-domain-only ID would name the bundle; the bundle wins.
	if id := svid.ID.String(); id != own.IDString() {
		out[id] = cert(id)
	}
	return out, nil
}

// trustBundles are the roots of each trust domain the workload trusts, by
// trust domain: its own, and with federated those of the federated trust
// domains the SVID carries. Federated ones are served only with the SPIFFE
// validator, which keeps each trust domain to its own roots; without it
// SDS serves what it always has, the workload's own trust domain.
func trustBundles(svid *sds.SVID, federated bool) map[spiffeid.TrustDomain][]*x509.Certificate {
	own := svid.ID.TrustDomain()
	out := map[spiffeid.TrustDomain][]*x509.Certificate{own: svid.Roots}
	if federated {
		for td, b := range svid.Federated {
			if td != own {
				out[td] = b.X509Authorities()
			}
		}
	}
	return out
}

// validationContexts returns the validation context secrets for bundles,
// by name, as SPIRE's agent names them:
//
//   - "spiffe://<td>" for each trust domain: that trust domain's roots;
//   - RootCAName: the roots of own, the workload's trust domain;
//   - with spiffeValidator, AllName: every trust domain's roots.
//
// Without spiffeValidator each is a trusted_ca (PEM roots), which Envoy's
// default validator uses whatever the peer's trust domain. With it each is
// a custom_validator_config for Envoy's SPIFFE validator holding one
// trust domain entry per trust domain served: Envoy picks the bundle by
// the trust domain in the peer's URI SAN, so a federated trust domain
// verifies only by its own roots and cannot mint another's identities.
// Trust domains without roots are left out; own must have roots.
func validationContexts(own spiffeid.TrustDomain, bundles map[spiffeid.TrustDomain][]*x509.Certificate, spiffeValidator bool) (map[string]*tlsv3.Secret, error) {
	if len(bundles[own]) == 0 {
		return nil, fmt.Errorf("envoy: no roots for the trust domain %s", own)
	}
	var tds []spiffeid.TrustDomain
	for td, roots := range bundles {
		if len(roots) > 0 {
			tds = append(tds, td)
		}
	}
	// Sorted, so that the same bundles give the same bytes (no push).
	slices.SortFunc(tds, func(a, b spiffeid.TrustDomain) int { return cmp.Compare(a.Name(), b.Name()) })

	out := map[string]*tlsv3.Secret{}
	add := func(name string, tds ...spiffeid.TrustDomain) error {
		if !spiffeValidator {
			out[name] = trustedCA(name, bundles[tds[0]])
			return nil
		}
		sec, err := spiffeValidatorSecret(name, tds, bundles)
		if err != nil {
			return err
		}
		out[name] = sec
		return nil
	}
	for _, td := range tds {
		if err := add(td.IDString(), td); err != nil {
			return nil, err
		}
	}
	if err := add(RootCAName, own); err != nil {
		return nil, err
	}
	if spiffeValidator {
		if err := add(AllName, tds...); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// trustedCA is a validation context trusting roots, for Envoy's default
// certificate validator.
func trustedCA(name string, roots []*x509.Certificate) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: inline(certsPEM(roots)),
	}}}
}

// spiffeValidatorSecret is a validation context configuring Envoy's SPIFFE
// validator with the roots of tds, in that order. Only the custom validator
// is set: Envoy hands all validation to it and ignores trusted_ca.
func spiffeValidatorSecret(name string, tds []spiffeid.TrustDomain, bundles map[spiffeid.TrustDomain][]*x509.Certificate) (*tlsv3.Secret, error) {
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	for _, td := range tds {
		cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
			Name:        td.Name(), // Envoy wants it without "spiffe://"
			TrustBundle: inline(certsPEM(bundles[td])),
		})
	}
	// Deterministic, so that unchanged bundles compare equal in sync.
	typed := &anypb.Any{}
	if err := anypb.MarshalFrom(typed, cfg, proto.MarshalOptions{Deterministic: true}); err != nil {
		return nil, fmt.Errorf("envoy: encoding the SPIFFE validator config %s: %w", name, err)
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		CustomValidatorConfig: &core.TypedExtensionConfig{Name: SPIFFEValidatorName, TypedConfig: typed},
	}}}, nil
}

func certsPEM(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func inline(b []byte) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
}

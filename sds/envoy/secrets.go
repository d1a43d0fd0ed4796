package envoy

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshca/meshca/sds"
)

// Resource names Envoy asks for. Istio's bootstrap uses DefaultName and
// RootCAName; SPIRE's uses the workload's SPIFFE ID and the trust domain's
// ID ("spiffe://example.org"). All four are published.
const (
	// DefaultName is the workload's certificate chain and key.
	DefaultName = "default"
	// RootCAName is the trust domain's roots.
	RootCAName = "ROOTCA"
)

// secrets returns the resources for svid, by name.
func secrets(svid *sds.SVID) (map[string]*tlsv3.Secret, error) {
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
	roots := certsPEM(svid.Roots)

	cert := func(name string) *tlsv3.Secret {
		return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(chain),
			PrivateKey:       inline(key),
		}}}
	}
	validation := func(name string) *tlsv3.Secret {
		return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(roots),
		}}}
	}

	out := map[string]*tlsv3.Secret{
		DefaultName: cert(DefaultName),
		RootCAName:  validation(RootCAName),
	}
	td := svid.ID.TrustDomain().IDString()
	out[td] = validation(td)
	// A trust-domain-only ID would name the bundle; the bundle wins.
	if id := svid.ID.String(); id != td {
		out[id] = cert(id)
	}
	return out, nil
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

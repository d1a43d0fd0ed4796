// Package audit builds the reports of `meshca audit cert` and `meshca audit
// issued`: what a certificate really says, and who holds which identity
// according to the CA's issuance log, with warnings for what looks wrong.
package audit

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CertReport describes one certificate chain.
type CertReport struct {
	Source    string    `json:"source"`
	SPIFFEID  string    `json:"spiffe_id"`
	URISANs   []string  `json:"uri_sans"`
	Serial    string    `json:"serial"`
	Issuer    string    `json:"issuer"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	TimeLeft  string    `json:"time_left"`
	KeyType   string    `json:"key_type"`
	ChainLen  int       `json:"chain_length"`
	// Verified is nil when no bundle was given.
	Verified    *bool    `json:"chain_verified,omitempty"`
	VerifyError string   `json:"verify_error,omitempty"`
	Warnings    []string `json:"warnings"`
}

// CertOptions tunes the warnings of Cert.
type CertOptions struct {
	// Bundle, when set, is what the chain must verify against.
	Bundle *x509bundle.Bundle
	// RenewFraction: warn when less than (1-RenewFraction) of the lifetime
	// is left, i.e. the certificate is past its renewal time. Default 0.5.
	RenewFraction float64
	// MaxLifetime: warn when the lifetime is longer. Default 72h.
	MaxLifetime time.Duration
}

// Cert reports on chain (leaf first) as of now.
func Cert(source string, chain []*x509.Certificate, now time.Time, o CertOptions) CertReport {
	if o.RenewFraction == 0 {
		o.RenewFraction = 0.5
	}
	if o.MaxLifetime == 0 {
		o.MaxLifetime = 72 * time.Hour
	}
	leaf := chain[0]
	r := CertReport{
		Source: source, Serial: leaf.SerialNumber.Text(16), Issuer: leaf.Issuer.String(),
		NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), KeyType: keyType(leaf.PublicKey),
		ChainLen: len(chain), URISANs: []string{}, Warnings: []string{},
	}
	for _, u := range leaf.URIs {
		r.URISANs = append(r.URISANs, u.String())
	}
	if id, err := x509svid.IDFromCert(leaf); err == nil {
		r.SPIFFEID = id.String()
	}
	left := leaf.NotAfter.Sub(now)
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	r.TimeLeft = left.Round(time.Second).String()
	warn := func(format string, args ...any) { r.Warnings = append(r.Warnings, fmt.Sprintf(format, args...)) }
	switch {
	case left <= 0:
		warn("expired %s ago", (-left).Round(time.Second))
	case now.Before(leaf.NotBefore):
		warn("not valid yet (from %s)", leaf.NotBefore.UTC().Format(time.RFC3339))
	case left < time.Duration(float64(life)*(1-o.RenewFraction)):
		warn("past its renewal time (%.0f%% of the lifetime): the agent should have renewed it", o.RenewFraction*100)
	}
	switch n := len(leaf.URIs); {
	case n == 0:
		warn("no URI SAN: not an X509-SVID")
	case n > 1:
		warn("%d URI SANs: an X509-SVID has exactly one", n)
	}
	if leaf.IsCA {
		warn("CA bit set on a workload certificate")
	}
	if life > o.MaxLifetime {
		warn("lifetime %s is over the policy's %s", life.Round(time.Second), o.MaxLifetime)
	}
	if o.Bundle != nil {
		_, _, err := x509svid.Verify(chain, o.Bundle, x509svid.WithTime(now))
		ok := err == nil
		r.Verified = &ok
		if err != nil {
			r.VerifyError = err.Error()
			warn("chain does not verify against the bundle")
		}
	}
	return r
}

func keyType(pub any) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// Issued is one certificate from the CA's issuance log.
type Issued struct {
	Serial         string    `json:"serial"`
	SPIFFEID       string    `json:"spiffe_id"`
	NotBefore      time.Time `json:"not_before"`
	NotAfter       time.Time `json:"not_after"`
	CredentialKind string    `json:"credential_kind"`
	Requester      string    `json:"requester,omitempty"`
	// Peer is the caller's address; distinct hosts estimate the holders.
	Peer     string    `json:"peer,omitempty"`
	IssuedAt time.Time `json:"issued_at"`
	Revoked  bool      `json:"revoked"`
}

// Identity summarises one SPIFFE ID's certificates.
type Identity struct {
	SPIFFEID    string    `json:"spiffe_id"`
	Issued      int       `json:"issued"`
	Live        int       `json:"live"`
	Revoked     int       `json:"revoked"`
	LastIssued  time.Time `json:"last_issued"`
	Credentials []string  `json:"credential_kinds"`
}

// IssuedReport is who holds which identity.
type IssuedReport struct {
	Window     string     `json:"window,omitempty"`
	Identities []Identity `json:"identities"`
	Revoked    []Issued   `json:"revoked"`
	Warnings   []string   `json:"warnings"`
}

// Summarize groups records by identity as of now. window is the span the
// records cover (0: unknown, then rotation-rate warnings are skipped).
// An identity is flagged when it was issued more than three times what its
// holders (distinct caller hosts; else half its live certificates, as each
// holder renewing at half life keeps about two alive) renewing at half
// their lifetime explain over the window.
func Summarize(recs []Issued, now time.Time, window time.Duration) IssuedReport {
	by := map[string]*Identity{}
	lifetimes := map[string]time.Duration{}
	kinds := map[string]map[string]bool{}
	hosts := map[string]map[string]bool{}
	rep := IssuedReport{Identities: []Identity{}, Revoked: []Issued{}, Warnings: []string{}}
	if window > 0 {
		rep.Window = window.String()
	}
	for _, r := range recs {
		id := by[r.SPIFFEID]
		if id == nil {
			id = &Identity{SPIFFEID: r.SPIFFEID}
			by[r.SPIFFEID], kinds[r.SPIFFEID], hosts[r.SPIFFEID] = id, map[string]bool{}, map[string]bool{}
		}
		id.Issued++
		if r.Revoked {
			id.Revoked++
			rep.Revoked = append(rep.Revoked, r)
		} else if now.Before(r.NotAfter) && !now.Before(r.NotBefore) {
			id.Live++
		}
		if r.IssuedAt.After(id.LastIssued) {
			id.LastIssued = r.IssuedAt
		}
		kinds[r.SPIFFEID][r.CredentialKind] = true
		if r.Peer != "" {
			host, _, err := net.SplitHostPort(r.Peer)
			if err != nil {
				host = r.Peer
			}
			hosts[r.SPIFFEID][host] = true
		}
		lifetimes[r.SPIFFEID] += r.NotAfter.Sub(r.NotBefore)
	}
	for name, id := range by {
		for k := range kinds[name] {
			id.Credentials = append(id.Credentials, k)
		}
		sort.Strings(id.Credentials)
		rep.Identities = append(rep.Identities, *id)
		if window <= 0 {
			continue
		}
		avgLife := lifetimes[name] / time.Duration(id.Issued)
		holders := len(hosts[name])
		if holders == 0 {
			holders = max(id.Live/2, 1)
		}
		expected := float64(holders) * (float64(window)/float64(avgLife/2) + 1)
		if float64(id.Issued) > 3*expected {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: %d certificates in %s, over three times what %d live holder(s) renewing at half of a %s lifetime explain (~%.0f)",
				name, id.Issued, window, holders, avgLife.Round(time.Minute), expected))
		}
	}
	sort.Slice(rep.Identities, func(i, j int) bool { return rep.Identities[i].SPIFFEID < rep.Identities[j].SPIFFEID })
	sort.Strings(rep.Warnings)
	return rep
}

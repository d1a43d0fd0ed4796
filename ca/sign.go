package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SignRequest asks for one X509-SVID.
type SignRequest struct {
	// CSR is the PEM certificate signing request.
	CSR []byte
	// PublicKey is, instead of a CSR, the DER SubjectPublicKeyInfo of a
	// key whose possession a party the CA trusts has already checked (the
	// Kubernetes API server checks a PodCertificateRequest's proof of
	// possession). The key is checked as a CSR's is (CheckPublicKey); the
	// identity is the request's. Set exactly one of CSR and PublicKey.
	PublicKey []byte
	// TTL is the requested lifetime; zero means Config.DefaultTTL.
	TTL time.Duration
	// WholeLifetime makes TTL the certificate's whole validity, from its
	// backdated NotBefore to its NotAfter, instead of the time from now
	// on: for callers bound by NotAfter−NotBefore (a
	// PodCertificateRequest's maxExpirationSeconds).
	WholeLifetime bool
	// Identity is what the caller's credential proved.
	Identity attestor.Identity
	// Peer is the caller's network address, for the record.
	Peer string
}

// Issued is a certificate handed out.
type Issued struct {
	// DER is the leaf certificate.
	DER []byte
	// ChainPEM is the leaf and its intermediates, one PEM certificate
	// each, then the trust bundle, every root trusted now in one element
	// (as istiod answers: "the root cert is the last element"; during a
	// root rotation the old and the new root). In direct mode the first
	// intermediate is the parent's certificate (a plug-in ca-cert.pem), as
	// istiod returns it.
	ChainPEM []string
	Record   store.Issuance
}

// Certificate parses the leaf. Sign itself never needs to (see
// ValidateLeaf), so the cost is paid only by callers who want it.
func (i *Issued) Certificate() (*x509.Certificate, error) { return x509.ParseCertificate(i.DER) }

// Sign turns a CSR into an X509-SVID for req.Identity: it checks the
// lifetime and the CSR, signs a leaf from a fresh template with the active
// intermediate (in direct mode, the parent), re-checks it with
// ValidateLeaf, and records it durably.
func (a *Authority) Sign(ctx context.Context, req SignRequest) (*Issued, error) {
	return a.observedSign(ctx, req, "")
}

// observedSign is sign, counted in the metrics.
func (a *Authority) observedSign(ctx context.Context, req SignRequest, once string) (*Issued, error) {
	start := a.cfg.Clock.Now()
	iss, err := a.sign(ctx, req, start, once)
	a.cfg.Metrics.Issued(req.Identity.Kind, result(err), a.cfg.Clock.Now().Sub(start))
	return iss, err
}

// result classifies the outcome of Sign or MintJWTSVID for the metrics'
// result label.
func result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, store.ErrConflict):
		return "answered-elsewhere"
	case errors.Is(err, ErrInvalidCSR), errors.Is(err, ErrInvalidJWTRequest), errors.Is(err, ErrInvalidTTL):
		return "invalid"
	case errors.Is(err, ErrIdentityMismatch):
		return "denied"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	}
	return "error"
}

// lifetime is the lifetime a caller asked for (0: def), checked against
// the bounds; what names the kind of credential in errors ("" for a
// certificate).
func lifetime(ttl, def, minTTL, maxTTL time.Duration, what string) (time.Duration, error) {
	switch {
	case ttl < 0:
		return 0, fmt.Errorf("%w: %s is negative", ErrInvalidTTL, ttl)
	case ttl == 0:
		return def, nil
	case ttl > maxTTL:
		return 0, fmt.Errorf("%w: requested %s is over the %smaximum %s", ErrInvalidTTL, ttl, what, maxTTL)
	case ttl < minTTL:
		return 0, fmt.Errorf("%w: requested %s is under the %sminimum %s", ErrInvalidTTL, ttl, what, minTTL)
	}
	return ttl, nil
}

// inTrustDomain refuses an identity of another trust domain.
func (a *Authority) inTrustDomain(id spiffeid.ID) error {
	if id.TrustDomain() != a.cfg.TrustDomain {
		return fmt.Errorf("%w: identity %s is not in trust domain %s", ErrIdentityMismatch, id, a.cfg.TrustDomain.Name())
	}
	return nil
}

// subjectKey returns the key a request certifies and its DER
// SubjectPublicKeyInfo: the CSR's, checked (CheckCSR), or PublicKey's.
func subjectKey(req SignRequest) (crypto.PublicKey, []byte, error) {
	if len(req.PublicKey) > 0 {
		if len(req.CSR) > 0 {
			return nil, nil, fmt.Errorf("%w: give a CSR or a public key, not both", ErrInvalidCSR)
		}
		pub, err := x509.ParsePKIXPublicKey(req.PublicKey)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: public key: %v", ErrInvalidCSR, err)
		}
		if err := CheckPublicKey(pub); err != nil {
			return nil, nil, err
		}
		spki, err := x509.MarshalPKIXPublicKey(pub) // the encoding the certificate carries
		return pub, spki, err
	}
	if pub, spki, ok := parseCSRFast(req.CSR, req.Identity.ID); ok {
		return pub, spki, nil
	}
	csr, err := ParseCSR(req.CSR)
	if err != nil {
		return nil, nil, err
	}
	if err := CheckCSR(csr, req.Identity.ID); err != nil {
		return nil, nil, err
	}
	return csr.PublicKey, csr.RawSubjectPublicKeyInfo, nil
}

// SigningCost is the least time one leaf's signature and its check have
// taken with the active signing CA: the CPU a signature costs, without
// waiting for a CPU in it, or zero before the CA's first. The server's
// gate bounds the pace its retry hints assume by it.
func (a *Authority) SigningCost() time.Duration {
	if s := a.active.Load(); s != nil {
		return time.Duration(s.fastest.Load())
	}
	return 0
}

// sign signs and records; with once set, the record goes with the answer
// to that request key (SignOnce).
func (a *Authority) sign(ctx context.Context, req SignRequest, now time.Time, once string) (*Issued, error) {
	ttl, err := lifetime(req.TTL, a.cfg.DefaultTTL, MinLeafTTL, a.cfg.MaxTTL, "")
	if err != nil {
		return nil, err
	}
	if err := a.inTrustDomain(req.Identity.ID); err != nil {
		return nil, err
	}
	pub, spki, err := subjectKey(req)
	if err != nil {
		return nil, err
	}
	s := a.active.Load()
	start, end := latest(now.Add(-a.cfg.Backdate), s.cert.NotBefore), now.Add(ttl)
	if req.WholeLifetime {
		end = start.Add(ttl)
	}
	// Certificates carry whole seconds; truncate so the record matches.
	notBefore := start.Truncate(time.Second)
	notAfter := earliest(end, s.notAfter).Truncate(time.Second) // never outlive the issuer or its chain
	if !now.Before(notAfter) {
		return nil, fmt.Errorf("%w: signing CA has expired", ErrUnavailable)
	}
	der, serial, err := s.signLeaf(req.Identity.ID, pub, spki, notBefore, notAfter)
	if err != nil {
		return nil, err
	}
	if err := ValidateLeaf(der, s.cert, req.Identity.ID, spki, now); err != nil {
		a.cfg.Logger.Error("issued certificate refused by the validator", "spiffe_id", req.Identity.ID.String(), "err", err)
		return nil, err
	}
	rec := store.Issuance{
		Serial:          serial.Text(16),
		SPIFFEID:        req.Identity.ID.String(),
		NotBefore:       notBefore,
		NotAfter:        notAfter,
		PublicKeySHA256: publicKeySHA256(spki),
		CredentialKind:  req.Identity.Kind,
		Requester:       req.Identity.Subject,
		Peer:            req.Peer,
		IssuedAt:        now,
		Details:         req.Identity.Details,
	}
	chain := make([]string, 0, len(s.chainPEM)+2)
	chain = append(chain, certificatePEM(der))
	chain = append(chain, s.chainPEM...)
	// Loaded after s: a rotation publishes a root before anything chains
	// to it, so these roots include the one s chains to.
	chain = append(chain, a.trust.Load().rootsStr)
	if err := a.record(ctx, rec, once, chain); err != nil {
		return nil, err
	}
	if a.cfg.Logger.Enabled(ctx, slog.LevelDebug) { // spares boxing the arguments per issuance
		a.cfg.Logger.Debug("issued", "spiffe_id", rec.SPIFFEID, "serial", rec.Serial, "kind", rec.CredentialKind, "not_after", rec.NotAfter)
	}
	return &Issued{DER: der, ChainPEM: chain, Record: rec}, nil
}

// IssueServing issues a TLS server certificate for the CA's own endpoints,
// with the given DNS and IP SANs, signed by the active intermediate (in
// direct mode, the parent) and chained like a leaf. It is not an SVID and
// is not recorded in the issuance log.
func (a *Authority) IssueServing(dnsNames []string, ips []net.IP, ttl time.Duration) (*tls.Certificate, error) {
	key, err := generateKey(a.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	s := a.active.Load()
	now := a.cfg.Clock.Now()
	notBefore := latest(now.Add(-a.cfg.Backdate), s.cert.NotBefore)
	notAfter := earliest(now.Add(ttl), s.notAfter)
	tmpl, err := servingTemplate(dnsNames, ips, key.Public(), notBefore, notAfter)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.cert, key.Public(), s.key)
	if err != nil {
		return nil, fmt.Errorf("ca: sign serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	chain := append([][]byte{der}, s.chainDER...)
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// publicKeySHA256 is how the issuance log names a certificate's key: the
// SHA-256 of its SubjectPublicKeyInfo, in hex.
func publicKeySHA256(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

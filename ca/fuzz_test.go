package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
	"github.com/meshca/meshca/internal/testca"
)

// FuzzParseCSR checks that any input either parses to a CSR whose
// signature verified, or fails with ErrInvalidCSR, and that CheckCSR never
// panics on what parses.
func FuzzParseCSR(f *testing.F) {
	key := p256(f)
	f.Add(csrPEM(f, key, fooCSR()))
	f.Add(csrPEM(f, key, &x509.CertificateRequest{URIs: uris(fooID, otherID), DNSNames: []string{"a"}}))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte("not pem"))
	f.Fuzz(func(t *testing.T, in []byte) {
		csr, err := ca.ParseCSR(in)
		if err != nil {
			if !errors.Is(err, ca.ErrInvalidCSR) {
				t.Fatalf("error %v does not wrap ErrInvalidCSR", err)
			}
			return
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("ParseCSR accepted a CSR with a bad signature: %v", err)
		}
		if err := ca.CheckCSR(csr, fooID); err != nil && !errors.Is(err, ca.ErrInvalidCSR) && !errors.Is(err, ca.ErrIdentityMismatch) {
			t.Fatalf("CheckCSR error %v of unknown kind", err)
		}
	})
}

// FuzzValidateLeaf checks that the DER reader of the validator never
// panics and never accepts what crypto/x509 cannot parse.
func FuzzValidateLeaf(f *testing.F) {
	clk := clocktest.New(t0)
	a := newAuthority(f, storetest.NewMem(), clk, nil)
	key := p256(f)
	iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(f, key, fooCSR()), Identity: identity(fooID)})
	if err != nil {
		f.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	f.Add(iss.DER)
	f.Fuzz(func(t *testing.T, der []byte) {
		if ca.ValidateLeaf(der, a.SigningCertificate(), fooID, spki, clk.Now()) == nil {
			if _, err := x509.ParseCertificate(der); err != nil {
				t.Fatalf("validator accepted DER that crypto/x509 refuses: %v", err)
			}
		}
	})
}

// countingStore counts what reaches the store, to check that a refused
// request stores nothing.
type countingStore struct {
	store.Store
	revocations int
}

func (c *countingStore) Revoke(ctx context.Context, r store.Revocation) error {
	err := c.Store.Revoke(ctx, r)
	if err == nil {
		c.revocations++
	}
	return err
}

// FuzzRevoke checks the canonicalisation of Revoke's serials and SPIFFE
// IDs: a refused entry wraps ErrInvalidRevocation and stores nothing; an
// accepted one is stored in canonical form (lower-case hex without leading
// zeros, or the ID as go-spiffe prints it), revoking it again gives the
// same form, and CheckRevoked then refuses a certificate with that serial,
// or issued to that ID before the revocation.
func FuzzRevoke(f *testing.F) {
	for _, s := range []string{"0a", "00:0A:ff", "0xDEADbeef", "ff", "0", "-1", "+1", "", "zz", "1_0"} {
		f.Add(s, "")
	}
	for _, id := range []string{fooID.String(), "spiffe://example.org", "spiffe://Example.org/a", "spiffe://example.org/a/../b", "spiffe://example.org/a//b", "spiffe://example.org/a/", "spiffe://other.org/x", "http://example.org/a"} {
		f.Add("", id)
	}
	f.Add("0a", fooID.String())
	clk := clocktest.New(t0)
	st := &countingStore{Store: storetest.NewMem()}
	a := newAuthority(f, st, clk, nil)
	f.Fuzz(func(t *testing.T, serial, id string) {
		ctx := context.Background()
		// A fresh deny-list each time, so memory stays bounded over long
		// runs; the CA state read at New is not used by Revoke.
		st.Store = storetest.NewMem()
		before := st.revocations
		got, err := a.Revoke(ctx, store.Revocation{Serial: serial, SPIFFEID: id, Reason: "fuzz"})
		if err != nil {
			if !errors.Is(err, ca.ErrInvalidRevocation) {
				t.Fatalf("Revoke(%q, %q): %v, want ErrInvalidRevocation (the store does not fail)", serial, id, err)
			}
			if st.revocations != before {
				t.Fatalf("Revoke(%q, %q) refused (%v) but stored an entry", serial, id, err)
			}
			return
		}
		if st.revocations != before+1 {
			t.Fatalf("Revoke(%q, %q) accepted; %d entries stored", serial, id, st.revocations-before)
		}
		if (serial == "") == (id == "") {
			t.Fatalf("Revoke accepted serial %q and ID %q together", serial, id)
		}
		cert := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: got.RevokedAt.Add(-time.Hour)}
		var certID spiffeid.ID
		if serial != "" {
			n, ok := new(big.Int).SetString(got.Serial, 16)
			if !ok || n.Sign() <= 0 || n.Text(16) != got.Serial {
				t.Fatalf("Revoke(serial %q) stored %q, not canonical hex", serial, got.Serial)
			}
			cert.SerialNumber = n
			certID = otherID
		} else {
			parsed, err := spiffeid.FromString(got.SPIFFEID)
			if err != nil || parsed.String() != got.SPIFFEID {
				t.Fatalf("Revoke(ID %q) stored %q, not a canonical SPIFFE ID: %v", id, got.SPIFFEID, err)
			}
			certID = parsed
		}
		again, err := a.Revoke(ctx, store.Revocation{Serial: got.Serial, SPIFFEID: got.SPIFFEID})
		if err != nil || again.Serial != got.Serial || again.SPIFFEID != got.SPIFFEID {
			t.Fatalf("revoking the canonical form %+v again: (%+v, %v)", got, again, err)
		}
		if err := a.CheckRevoked(ctx, []*x509.Certificate{cert}, certID); err == nil {
			t.Fatalf("Revoke(%q, %q) stored %+v, yet a certificate it covers is not revoked", serial, id, got)
		}
	})
}

// FuzzLoadCACerts writes an Istio cacerts directory from fuzzed DER
// (ca-cert.pem, ca-key.pem as one of the three PEM key types,
// root-cert.pem, and optionally cert-chain.pem holding a further
// certificate and the root) and checks that LoadCACerts never panics and
// that what it accepts is a working parent: its certificate is a CA
// chaining to an anchor among the roots, and its key signs intermediates
// that the certificate verifies. The PEM layer itself is fuzzed by
// pki.FuzzParseCertificates; DER here lets mutations reach the chain and
// key checks.
func FuzzLoadCACerts(f *testing.F) {
	rootKey, caKey := p256(f), p256(f)
	root := testCA(f, "Root CA", rootKey, nil, nil)
	caCert := testCA(f, "Intermediate CA", caKey, root, rootKey)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(caKey)
	rootPKCS8, _ := x509.MarshalPKCS8PrivateKey(rootKey)
	sec1, _ := x509.MarshalECPrivateKey(caKey.(*ecdsa.PrivateKey))
	f.Add(caCert.Raw, pkcs8, uint8(0), root.Raw, caCert.Raw, true)
	f.Add(caCert.Raw, sec1, uint8(1), root.Raw, []byte(nil), false)
	f.Add(root.Raw, rootPKCS8, uint8(0), root.Raw, []byte(nil), false)
	f.Add(caCert.Raw, rootPKCS8, uint8(0), root.Raw, []byte(nil), false)
	f.Add(caCert.Raw, pkcs8, uint8(2), caCert.Raw, root.Raw, true)
	f.Add([]byte{0x30, 0}, []byte{0x30, 0}, uint8(0), []byte{}, []byte{}, true)
	// Istio's own layout: ca-cert with pathlen 0, signing leaves directly.
	istio := testca.NewIstioCACerts(f, testca.IstioOptions{Now: t0})
	istioKey, _ := x509.MarshalPKCS8PrivateKey(istio.CAKey)
	f.Add(istio.CACert.Raw, istioKey, uint8(0), istio.Root.Raw, istio.CACert.Raw, true)

	keyTypes := []string{"PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"}
	// One directory and one intermediate key for every input: each worker
	// runs the inputs one at a time, and a cheap input keeps minimisation
	// quick.
	dir := f.TempDir()
	interKey := p256(f)
	f.Fuzz(func(t *testing.T, caDER, keyDER []byte, keyType uint8, rootDER, chainDER []byte, withChain bool) {
		write := func(name string, mode os.FileMode, typ string, ders ...[]byte) {
			var b []byte
			for _, d := range ders {
				b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
			}
			if err := os.WriteFile(filepath.Join(dir, name), b, mode); err != nil {
				t.Fatal(err)
			}
		}
		write(ca.CACertFile, 0o644, "CERTIFICATE", caDER)
		write(ca.CAKeyFile, 0o600, keyTypes[int(keyType)%len(keyTypes)], keyDER)
		write(ca.RootCertFile, 0o644, "CERTIFICATE", rootDER)
		if withChain {
			write(ca.CertChainFile, 0o644, "CERTIFICATE", chainDER, rootDER)
		} else if err := os.Remove(filepath.Join(dir, ca.CertChainFile)); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		p, err := ca.LoadCACerts(dir, t0, ca.CACertsOptions{})
		if err != nil {
			return
		}
		c := p.Certificate()
		if !c.IsCA || !c.BasicConstraintsValid {
			t.Fatal("accepted a signing certificate that is not a CA")
		}
		anchored := false
		for _, r := range p.Roots() {
			anchored = anchored || r.Equal(p.Anchor())
		}
		if !anchored {
			t.Fatal("accepted an anchor that is not among the roots")
		}
		if p.SignsLeaves() {
			// Direct mode: the whole issuance path must work with it.
			a, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Store: storetest.NewMem(), Parent: p, Clock: clocktest.New(t0)})
			if err != nil {
				t.Fatalf("accepted parent does not start a CA: %v", err)
			}
			iss, err := a.Sign(context.Background(), ca.SignRequest{CSR: csrPEM(t, interKey, fooCSR()), Identity: identity(fooID)})
			if err != nil {
				t.Fatalf("accepted parent cannot sign leaves: %v", err)
			}
			if err := leafOf(t, iss).CheckSignatureFrom(c); err != nil {
				t.Fatalf("accepted key does not belong to ca-cert.pem: %v", err)
			}
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(2), NotBefore: t0, NotAfter: t0.Add(time.Hour),
			BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign,
		}
		inter, err := p.SignIntermediate(context.Background(), tmpl, interKey)
		if err != nil {
			t.Fatalf("accepted parent cannot sign: %v", err)
		}
		if err := inter.CheckSignatureFrom(c); err != nil {
			t.Fatalf("accepted key does not belong to ca-cert.pem: %v", err)
		}
	})
}

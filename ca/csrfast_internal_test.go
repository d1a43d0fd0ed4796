package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/meshca/meshca/attestor"
)

var fastWant = spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")

// fastCSR is a DER CSR from x509.CreateCertificateRequest for key and tmpl.
func fastCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pemCSR(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// ext is a CSR extension with value v (DER-encoded with asn1.Marshal
// unless it is already []byte).
func ext(t testing.TB, oid asn1.ObjectIdentifier, critical bool, v any) pkix.Extension {
	t.Helper()
	b, ok := v.([]byte)
	if !ok {
		b = mustMarshal(t, v)
	}
	return pkix.Extension{Id: oid, Critical: critical, Value: b}
}

// sanURIs is a subjectAltName value of URIs.
func sanURIs(t testing.TB, uris ...string) []byte {
	t.Helper()
	var names []asn1.RawValue
	for _, u := range uris {
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(u)})
	}
	return mustMarshal(t, names)
}

// checkFastPath compares the fast path with ParseCSR and CheckCSR on one
// PEM CSR: whenever the fast path accepts, they must too, with the same
// key. It returns whether each accepted.
func checkFastPath(t testing.TB, csrPEM []byte, want spiffeid.ID) (fast, full bool) {
	t.Helper()
	pub, spki, ok := parseCSRFast(csrPEM, want)
	csr, err := ParseCSR(csrPEM)
	if err == nil {
		err = CheckCSR(csr, want)
	}
	if ok {
		if err != nil {
			t.Fatalf("the fast path accepted a CSR that ParseCSR/CheckCSR refuse (%v):\n%s", err, csrPEM)
		}
		if !bytes.Equal(spki, csr.RawSubjectPublicKeyInfo) || !pub.Equal(csr.PublicKey) {
			t.Fatalf("the fast path found another key:\n%s", csrPEM)
		}
	}
	return ok, err == nil
}

// TestParseCSRFast: the shapes of CSR that workloads send are read by the
// fast path, and every other CSR, well formed or not, is left to ParseCSR
// and CheckCSR, which the fast path never contradicts.
func TestParseCSRFast(t *testing.T) {
	p256, p384, rsaKey := testKey(t, "p256"), testKey(t, "p384"), testKey(t, "rsa2048")
	u := fastWant.String()
	uriOf := func(s string) []*url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return []*url.URL{v}
	}
	plain := fastCSR(t, p256, &x509.CertificateRequest{URIs: uriOf(u)})
	tampered := bytes.Clone(plain)
	tampered[len(tampered)-1] ^= 1
	tcs := []struct {
		name       string
		pem        []byte
		want       spiffeid.ID
		fast, full bool
	}{
		{"P-256, URI only (go-spiffe, meshca's agent)", pemCSR(plain), fastWant, true, true},
		{"OpenSSL's, from the README's command", readTestdata(t, "openssl-p256-demo.csr.pem"),
			spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/demo"), true, true},
		{"P-384", pemCSR(fastCSR(t, p384, &x509.CertificateRequest{URIs: uriOf(u)})), fastWant, true, true},
		{"P-256 signed with SHA-384", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{URIs: uriOf(u), SignatureAlgorithm: x509.ECDSAWithSHA384})), fastWant, true, true},
		{"istio-agent: empty O, critical SAN", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{
			Subject:         pkix.Name{Organization: []string{""}},
			ExtraExtensions: []pkix.Extension{ext(t, oidCSRSubjectAltName, true, sanURIs(t, u))},
		})), fastWant, true, true},
		{"subject in plain strings", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{
			Subject: pkix.Name{CommonName: "wörkload", Organization: []string{"Acme, Inc."}}, URIs: uriOf(u),
		})), fastWant, true, true},
		{"usages and basicConstraints CA false", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{URIs: uriOf(u), ExtraExtensions: []pkix.Extension{
			ext(t, oidCSRKeyUsage, true, asn1.BitString{Bytes: []byte{0x80}, BitLength: 1}),
			ext(t, oidCSRExtKeyUsage, false, []asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 2}}),
			ext(t, oidBasicConstraints, true, []byte{0x30, 0x00}),
		}})), fastWant, true, true},
		{"basicConstraints with a path length", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{URIs: uriOf(u), ExtraExtensions: []pkix.Extension{
			ext(t, oidBasicConstraints, true, []byte{0x30, 0x03, 0x02, 0x01, 0x00}),
		}})), fastWant, true, true},
		{"line endings CRLF", bytes.ReplaceAll(pemCSR(plain), []byte("\n"), []byte("\r\n")), fastWant, true, true},
		{"blank lines around", append(append([]byte("\n \n"), pemCSR(plain)...), "\n\n \t"...), fastWant, true, true},
		{"spaces after END", append(bytes.TrimSuffix(pemCSR(plain), []byte("\n")), " \t\r\n"...), fastWant, true, true},
		{"BEGIN not at the start of its line", append([]byte(" \n\t"), pemCSR(plain)...), fastWant, false, false},
		{"a no-break space after END", append(bytes.TrimSuffix(pemCSR(plain), []byte("\n")), "\u00a0"...), fastWant, false, false},
		{"CR LF CR after END", append(bytes.TrimSuffix(pemCSR(plain), []byte("\n")), "\r\n\r"...), fastWant, true, true},
		{"no newline after END", bytes.TrimSuffix(pemCSR(plain), []byte("\n")), fastWant, true, true},
		{"a lone CR after END", append(bytes.TrimSuffix(pemCSR(plain), []byte("\n")), "\r"...), fastWant, false, false},
		{"CR CR LF after END", append(bytes.TrimSuffix(pemCSR(plain), []byte("\n")), "\r\r\n"...), fastWant, false, false},
		{"NEW CERTIFICATE REQUEST", pem.EncodeToMemory(&pem.Block{Type: "NEW CERTIFICATE REQUEST", Bytes: plain}), fastWant, true, true},
		{"tab CR after END", append(bytes.TrimSuffix(pemCSR(plain), []byte("\n")), "\t\r"...), fastWant, false, false},
		{"CR space LF after END", append(bytes.TrimSuffix(pemCSR(plain), []byte("\n")), "\r \n"...), fastWant, false, false},

		// Built by hand, signed.
		{"SAN marked not critical explicitly", pemCSR(handCSR(t, p256, emptyName, nil, handExt(oidExtSubjectAltName, []byte{0x01, 0x01, 0x00}, sanURIs(t, u)))), fastWant, true, true},
		{"SAN twice", pemCSR(handCSR(t, p256, emptyName, nil, handExt(oidExtSubjectAltName, nil, sanURIs(t, u)), handExt(oidExtSubjectAltName, nil, sanURIs(t, u)))), fastWant, false, false},
		{"URI name constructed", pemCSR(handCSR(t, p256, emptyName, nil, handExt(oidExtSubjectAltName, nil, append([]byte{0x30, byte(len(u) + 4), 0xa6, byte(len(u) + 2), 0x16, byte(len(u))}, u...)))), fastWant, false, false},
		{"an empty RDN", pemCSR(handCSR(t, p256, []byte{0x30, 0x02, 0x31, 0x00}, nil, handExt(oidExtSubjectAltName, nil, sanURIs(t, u)))), fastWant, false, true},
		{"key with a parameter after the curve", pemCSR(handCSR(t, p256, emptyName, paddedSPKI(t, p256), handExt(oidExtSubjectAltName, nil, sanURIs(t, u)))), fastWant, false, false},
		{"compressed point", pemCSR(handCSR(t, p256, emptyName, compressedSPKI(t, p256), handExt(oidExtSubjectAltName, nil, sanURIs(t, u)))), fastWant, false, false},

		// Left to the full parse, which accepts.
		{"RSA key", pemCSR(fastCSR(t, rsaKey, &x509.CertificateRequest{URIs: uriOf(u)})), fastWant, false, true},
		{"unknown non-critical extension", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{URIs: uriOf(u), ExtraExtensions: []pkix.Extension{
			ext(t, asn1.ObjectIdentifier{1, 2, 3, 4}, false, []byte{0x05, 0x00}),
		}})), fastWant, false, true},
		{"subject with an IA5String", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{
			RawSubject: mustMarshal(t, pkix.RDNSequence{{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: asn1.RawValue{Tag: asn1.TagIA5String, Bytes: []byte("x")}}}}), URIs: uriOf(u),
		})), fastWant, false, true},

		// Refused by both.
		{"signature tampered", pemCSR(tampered), fastWant, false, false},
		{"another identity", pemCSR(plain), spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/c"), false, false},
		{"two URIs", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{URIs: append(uriOf(u), uriOf(u+"x")...)})), fastWant, false, false},
		{"a DNS name too", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{URIs: uriOf(u), DNSNames: []string{"a.example"}})), fastWant, false, false},
		{"CA true", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{URIs: uriOf(u), ExtraExtensions: []pkix.Extension{
			ext(t, oidBasicConstraints, true, []byte{0x30, 0x03, 0x01, 0x01, 0xff}),
		}})), fastWant, false, false},
		{"unknown critical extension", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{URIs: uriOf(u), ExtraExtensions: []pkix.Extension{
			ext(t, asn1.ObjectIdentifier{1, 2, 3, 4}, true, []byte{0x05, 0x00}),
		}})), fastWant, false, false},
		{"no SAN", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{})), fastWant, false, false},
		{"extensions over the limit", pemCSR(fastCSR(t, p256, &x509.CertificateRequest{URIs: uriOf(u), ExtraExtensions: []pkix.Extension{
			ext(t, oidCSRExtKeyUsage, false, bytes.Repeat([]byte{0}, maxCSRExtensionBytes)),
		}})), fastWant, false, false},
		{"PEM headers", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Headers: map[string]string{"a": "b"}, Bytes: plain}), fastWant, false, false},
		{"text before", append([]byte("hello\n"), pemCSR(plain)...), fastWant, false, false},
		{"text after", append(pemCSR(plain), "hello\n"...), fastWant, false, false},
		{"two blocks", append(pemCSR(plain), pemCSR(plain)...), fastWant, false, false},
		{"trailing DER", pemCSR(append(bytes.Clone(plain), 0)), fastWant, false, false},
		{"not PEM", plain, fastWant, false, false},
		{"over the size limit", append(pemCSR(plain), bytes.Repeat([]byte(" "), MaxCSRSize)...), fastWant, false, false},
	}
	for _, tc := range tcs {
		t.Run(tc.name, func(t *testing.T) {
			fast, full := checkFastPath(t, tc.pem, tc.want)
			if fast != tc.fast || full != tc.full {
				t.Fatalf("fast path %v, ParseCSR+CheckCSR %v; want %v, %v", fast, full, tc.fast, tc.full)
			}
		})
	}
}

// handExt is a DER Extension: oid (contents), critical (a DER BOOLEAN,
// or nil for none) and value.
func handExt(oid, critical, value []byte) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(e *cryptobyte.Builder) {
		e.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(o *cryptobyte.Builder) { o.AddBytes(oid) })
		e.AddBytes(critical)
		e.AddASN1OctetString(value)
	})
	return b.BytesOrPanic()
}

// handCSR builds and signs (ECDSA with SHA-256) a CSR for key with the
// DER subject, spki (nil: key's own) and one extensionRequest of exts.
func handCSR(t testing.TB, key crypto.Signer, subject, spki []byte, exts ...[]byte) []byte {
	t.Helper()
	if spki == nil {
		spki = testSPKI(t, key.Public())
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(info *cryptobyte.Builder) {
		info.AddASN1Int64(0)
		info.AddBytes(subject)
		info.AddBytes(spki)
		info.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(attrs *cryptobyte.Builder) {
			attrs.AddASN1(cbasn1.SEQUENCE, func(attr *cryptobyte.Builder) {
				attr.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(o *cryptobyte.Builder) { o.AddBytes(oidExtensionRequest) })
				attr.AddASN1(cbasn1.SET, func(v *cryptobyte.Builder) {
					v.AddASN1(cbasn1.SEQUENCE, func(e *cryptobyte.Builder) {
						for _, x := range exts {
							e.AddBytes(x)
						}
					})
				})
			})
		})
	})
	der, err := signCSRInfo(key, b.BytesOrPanic())
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// signCSRInfo is the DER CSR of info, a CertificationRequestInfo, signed
// by key with ECDSA and SHA-256.
func signCSRInfo(key crypto.Signer, info []byte) ([]byte, error) {
	sum := sha256.Sum256(info)
	sig, err := key.Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		return nil, err
	}
	var c cryptobyte.Builder
	c.AddASN1(cbasn1.SEQUENCE, func(csr *cryptobyte.Builder) {
		csr.AddBytes(info)
		csr.AddBytes(algECDSAWithSHA256)
		csr.AddASN1BitString(sig)
	})
	return c.Bytes()
}

// compressedSPKI is key's P-256 SubjectPublicKeyInfo with the point in
// compressed form, which x509 does not parse.
func compressedSPKI(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	u, err := key.Public().(*ecdsa.PublicKey).Bytes() // 04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	point := append([]byte{0x02 | u[len(u)-1]&1}, u[1:33]...) // the sign of Y, X
	prefix := []byte{0x30, 0x39, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
		0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x22, 0x00}
	return append(prefix, point...)
}

// paddedSPKI is key's P-256 SubjectPublicKeyInfo with a NULL after the
// curve in its AlgorithmIdentifier: x509 parses it, but it is not the DER
// a certificate of the key carries.
func paddedSPKI(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der := testSPKI(t, key.Public())
	alg := append([]byte{0x30, 0x15}, der[4:4+0x13]...) // the AlgorithmIdentifier's contents, then a NULL
	alg = append(alg, 0x05, 0x00)
	return append(append([]byte{0x30, byte(len(alg) + len(der) - 4 - 0x13)}, alg...), der[4+0x13:]...)
}

// readTestdata is a file of testdata.
func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPlainTrustDomain: the trust domains whose names x509's URI checks
// could refuse are left to the full parse.
func TestPlainTrustDomain(t *testing.T) {
	for name, want := range map[string]bool{
		"cluster.local":                 true,
		"a":                             true,
		"a-b_c.d":                       true,
		"a..b":                          false,
		"":                              false,
		strings.Repeat("a", 64):         false,
		strings.Repeat("a.", 127) + "a": false,
	} {
		if got := plainTrustDomain(name); got != want {
			t.Errorf("plainTrustDomain(%q) = %v, want %v", name, got, want)
		}
	}
}

// fuzzSeedCSRs are the templates of the fuzz targets' seed CSRs for
// fastWant: the shapes workloads send.
func fuzzSeedCSRs(f *testing.F) []*x509.CertificateRequest {
	u := fastWant.URL()
	return []*x509.CertificateRequest{
		{URIs: []*url.URL{u}},
		{Subject: pkix.Name{Organization: []string{""}}, ExtraExtensions: []pkix.Extension{ext(f, oidCSRSubjectAltName, true, sanURIs(f, u.String()))}},
		{Subject: pkix.Name{CommonName: "w"}, URIs: []*url.URL{u}, ExtraExtensions: []pkix.Extension{ext(f, oidBasicConstraints, true, []byte{0x30, 0x00})}},
	}
}

// FuzzCSRFastPath: whatever the DER (wrapped in PEM) or the PEM text, the
// fast path never accepts a CSR that ParseCSR and CheckCSR refuse, and
// finds the key they find.
func FuzzCSRFastPath(f *testing.F) {
	p256 := testKey(f, "p256")
	for _, tmpl := range fuzzSeedCSRs(f) {
		der := fastCSR(f, p256, tmpl)
		f.Add(der, false)
		f.Add(pemCSR(der), true)
		for _, end := range []string{"\r\n", "\r", "\r\r\n", " \t\n\n", "\n\u00a0"} {
			f.Add(append(bytes.TrimSuffix(pemCSR(der), []byte("\n")), end...), true)
		}
		f.Add(append([]byte(" \n"), pemCSR(der)...), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, isPEM bool) {
		if !isPEM {
			data = pemCSR(data)
		}
		checkFastPath(t, data, fastWant)
	})
}

// TestSubjectKeyRefusesNonDERKey: a CSR whose key x509 parses but which is
// not in DER's one encoding is a bad request (ErrInvalidCSR), not a leaf
// the validator refuses after signing.
func TestSubjectKeyRefusesNonDERKey(t *testing.T) {
	key := testKey(t, "p256")
	csr := pemCSR(handCSR(t, key, emptyName, paddedSPKI(t, key), handExt(oidExtSubjectAltName, nil, sanURIs(t, fastWant.String()))))
	_, _, err := subjectKey(SignRequest{CSR: csr, Identity: attestor.Identity{ID: fastWant}})
	if !errors.Is(err, ErrInvalidCSR) {
		t.Fatalf("error %v, want ErrInvalidCSR", err)
	}
}

// FuzzCSRFastPathSigned holds the fast path to the same contract on fuzzed
// CertificationRequestInfo bodies, each signed before the check: a change
// inside a signed CSR breaks its signature, so FuzzCSRFastPath reaches the
// body's parsing only through the framing; this one reaches all of it.
func FuzzCSRFastPathSigned(f *testing.F) {
	p256 := testKey(f, "p256")
	for _, tmpl := range fuzzSeedCSRs(f) {
		csr, err := x509.ParseCertificateRequest(fastCSR(f, p256, tmpl))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(csr.RawTBSCertificateRequest)
	}
	f.Fuzz(func(t *testing.T, info []byte) {
		der, err := signCSRInfo(p256, info)
		if err != nil {
			t.Skip(err) // too long for cryptobyte's lengths
		}
		checkFastPath(t, pemCSR(der), fastWant)
	})
}

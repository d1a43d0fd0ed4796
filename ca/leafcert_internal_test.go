package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"io"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/meshca/meshca/internal/testca"
)

// testKeys are generated once per kind: RSA keys take long to make.
var testKeys = struct {
	sync.Mutex
	m map[string]crypto.Signer
}{m: map[string]crypto.Signer{}}

func testKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	testKeys.Lock()
	defer testKeys.Unlock()
	if k, ok := testKeys.m[kind]; ok {
		return k
	}
	var k crypto.Signer
	var err error
	switch kind {
	case "p256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "p521":
		k, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "p224":
		k, err = ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	case "rsa2048":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ed25519":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("unknown key kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	testKeys.m[kind] = k
	return k
}

// testIssuer makes a certificate for key to sign leaves with, with the
// given subject. With ski it is a CA with a subject key ID; without, it is
// not a CA, the one way x509 leaves the key ID out, so that the leaf signer
// is tried without an authority key ID.
func testIssuer(t testing.TB, key crypto.Signer, subject pkix.Name, ski bool) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		Subject:               subject,
		NotBefore:             time.Date(1940, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  ski,
	}
	if ski {
		tmpl.SubjectKeyId = []byte("0123456789abcdefghij")
	}
	c := testca.Sign(t, tmpl, nil, key.Public(), key)
	if (len(c.SubjectKeyId) > 0) != ski {
		t.Fatalf("issuer's subject key ID %x, want one: %v", c.SubjectKeyId, ski)
	}
	return c
}

// testSPKI is pub's DER SubjectPublicKeyInfo.
func testSPKI(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return spki
}

// TestLeafSignerMatchesCreateCertificate: for every issuer and subject key
// type, validity around the UTCTime/GeneralizedTime boundary, SPIFFE IDs
// whose lengths cross the DER length-encoding boundaries, and issuers with
// and without a key ID, the leaf signer encodes the TBSCertificate and the
// signature algorithm byte for byte as x509.CreateCertificate does for
// leafTemplate's template, and its certificate parses and verifies under
// the issuer.
func TestLeafSignerMatchesCreateCertificate(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	meshcaName := pkix.Name{Organization: []string{"meshca"}, CommonName: "meshca intermediate"}
	type issuerCase struct {
		name, key string
		subject   pkix.Name
		ski       bool
	}
	issuers := []issuerCase{
		{"p256", "p256", meshcaName, true},
		{"p384", "p384", meshcaName, true},
		{"p521", "p521", meshcaName, true},
		{"rsa2048", "rsa2048", meshcaName, true},
		{"ed25519", "ed25519", meshcaName, true},
		{"p256 without key ID", "p256", meshcaName, false},
		{"p256 with an empty subject", "p256", pkix.Name{}, true},
		{"p256 with a long subject", "p256", pkix.Name{CommonName: strings.Repeat("c", 60), Organization: []string{strings.Repeat("o", 60)}, OrganizationalUnit: []string{strings.Repeat("u", 60)}}, true},
	}
	paths := []string{"ns/a/sa/b", "ns/" + strings.Repeat("n", 60) + "/sa/" + strings.Repeat("s", 40), "ns/x/sa/" + strings.Repeat("y", 300)}
	times := []struct {
		name                string
		notBefore, notAfter time.Time
	}{
		{"now", time.Date(2026, 11, 24, 13, 4, 5, 0, time.UTC), time.Date(2026, 11, 25, 13, 4, 5, 0, time.UTC)},
		{"across 2050", time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC), time.Date(2050, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"before 1950", time.Date(1949, 12, 31, 23, 59, 59, 0, time.UTC), time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"another zone", time.Date(2026, 11, 24, 13, 4, 5, 0, time.FixedZone("x", 5*3600)), time.Date(2026, 11, 25, 1, 0, 0, 0, time.FixedZone("y", -7*3600))},
	}
	for _, ic := range issuers {
		issuerKey := testKey(t, ic.key)
		issuer := testIssuer(t, issuerKey, ic.subject, ic.ski)
		l := newLeafSigner(issuer, issuerKey)
		if l == nil {
			t.Fatalf("%s: no leaf signer", ic.name)
		}
		for _, subjectKind := range []string{"p256", "p384", "p521", "rsa2048", "ed25519"} {
			sub := testKey(t, subjectKind)
			spki := testSPKI(t, sub.Public())
			for _, path := range paths {
				for _, tc := range times {
					name := ic.name + "/" + subjectKind + "/" + tc.name + "/" + path[:min(len(path), 12)]
					id, err := spiffeid.FromPath(td, "/"+path)
					if err != nil {
						t.Fatal(err)
					}
					f, err := newLeafFields(id, sub.Public(), spki, tc.notBefore, tc.notAfter)
					if err != nil {
						t.Fatal(err)
					}
					want, err := x509.CreateCertificate(rand.Reader, leafTemplate(f), issuer, sub.Public(), issuerKey)
					if err != nil {
						t.Fatalf("%s: CreateCertificate: %v", name, err)
					}
					got, err := l.sign(f)
					if err != nil {
						t.Fatalf("%s: sign: %v", name, err)
					}
					wantCert, err := x509.ParseCertificate(want)
					if err != nil {
						t.Fatal(err)
					}
					gotCert, err := x509.ParseCertificate(got)
					if err != nil {
						t.Fatalf("%s: the leaf does not parse: %v", name, err)
					}
					if !bytes.Equal(gotCert.RawTBSCertificate, wantCert.RawTBSCertificate) {
						t.Fatalf("%s: TBSCertificate differs\n got %x\nwant %x", name, gotCert.RawTBSCertificate, wantCert.RawTBSCertificate)
					}
					if gotCert.SignatureAlgorithm != wantCert.SignatureAlgorithm {
						t.Fatalf("%s: signature algorithm %v, want %v", name, gotCert.SignatureAlgorithm, wantCert.SignatureAlgorithm)
					}
					// The issuer's key, not its CA bit (one issuer is not a CA).
					if err := issuer.CheckSignature(gotCert.SignatureAlgorithm, gotCert.RawTBSCertificate, gotCert.Signature); err != nil {
						t.Fatalf("%s: signature: %v", name, err)
					}
					if g, w := outerAlgorithm(t, got), outerAlgorithm(t, want); !bytes.Equal(g, w) {
						t.Fatalf("%s: outer signature algorithm %x, want %x", name, g, w)
					}
				}
			}
		}
	}
}

// outerAlgorithm returns the signatureAlgorithm element of a certificate,
// after checking that it is followed by a signature BIT STRING and nothing
// else.
func outerAlgorithm(t *testing.T, der []byte) []byte {
	t.Helper()
	in := cryptobyte.String(der)
	var cert, alg cryptobyte.String
	var sig asn1.BitString
	if !in.ReadASN1(&cert, cbasn1.SEQUENCE) || !in.Empty() || !cert.SkipASN1(cbasn1.SEQUENCE) ||
		!cert.ReadASN1Element(&alg, cbasn1.SEQUENCE) || !cert.ReadASN1BitString(&sig) || !cert.Empty() || sig.BitLength%8 != 0 {
		t.Fatalf("malformed certificate %x", der)
	}
	return alg
}

// TestNewLeafSignerDeclines: keys the encoder has no signature algorithm
// for, and a key that is not the issuer's, are left to
// x509.CreateCertificate, which refuses the mismatch as it always did.
func TestNewLeafSignerDeclines(t *testing.T) {
	p256 := testKey(t, "p256")
	for _, tc := range []struct {
		name   string
		issuer *x509.Certificate
		key    crypto.Signer
	}{
		{"P-224 key", &x509.Certificate{PublicKey: testKey(t, "p224").Public()}, testKey(t, "p224")},
		{"another key than the issuer's", testIssuer(t, p256, pkix.Name{CommonName: "a"}, true), testKey(t, "p384")},
		{"issuer without a key", &x509.Certificate{}, p256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if l := newLeafSigner(tc.issuer, tc.key); l != nil {
				t.Fatal("newLeafSigner accepted it")
			}
		})
	}
	t.Run("mismatch refused when signing", func(t *testing.T) {
		issuer := testIssuer(t, p256, pkix.Name{CommonName: "a"}, true)
		s := &signingCA{cert: issuer, key: testKey(t, "p384")}
		s.leaf = newLeafSigner(s.cert, s.key)
		spki := testSPKI(t, p256.Public())
		now := time.Now().Truncate(time.Second)
		if _, _, err := s.signLeaf(spiffeid.RequireFromString("spiffe://td/x"), p256.Public(), spki, now, now.Add(time.Hour)); err == nil ||
			!strings.Contains(err.Error(), "doesn't match parent's PublicKey") {
			t.Fatalf("err = %v, want CreateCertificate's mismatch error", err)
		}
	})
}

// faultySigner signs, then flips a bit of the signature's last byte, as a
// faulty device might.
type faultySigner struct{ crypto.Signer }

func (f faultySigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := f.Signer.Sign(r, digest, opts)
	if err != nil {
		return nil, err
	}
	sig = bytes.Clone(sig)
	sig[len(sig)-1] ^= 1
	return sig, nil
}

// TestLeafSignerVerifiesItsSignature: a signature that does not verify
// under the issuer's key never leaves sign, for every kind of issuer key.
func TestLeafSignerVerifiesItsSignature(t *testing.T) {
	sub := testKey(t, "p256")
	spki := testSPKI(t, sub.Public())
	id := spiffeid.RequireFromString("spiffe://td/ns/a/sa/b")
	now := time.Now().Truncate(time.Second)
	for _, kind := range []string{"p256", "p384", "p521", "rsa2048", "ed25519"} {
		t.Run(kind, func(t *testing.T) {
			key := testKey(t, kind)
			issuer := testIssuer(t, key, pkix.Name{CommonName: "i"}, true)
			l := newLeafSigner(issuer, faultySigner{key})
			if l == nil {
				t.Fatal("no leaf signer")
			}
			ski, err := subjectKeyIDFromSPKI(spki)
			if err != nil {
				t.Fatal(err)
			}
			_, err = l.sign(leafFields{serial: big.NewInt(1), notBefore: now, notAfter: now.Add(time.Hour), id: id, pub: sub.Public(), spki: spki, ski: ski})
			if err == nil || !strings.Contains(err.Error(), "does not verify") {
				t.Fatalf("err = %v, want the signature refused", err)
			}
		})
	}
}

// TestCanonicalSPKI: a P-256 or P-384 key as x509 encodes it is used as
// given; any other encoding or key type, or the encoding of another key, is
// encoded again from the key.
func TestCanonicalSPKI(t *testing.T) {
	for _, kind := range []string{"p256", "p384", "p521", "rsa2048", "ed25519"} {
		pub := testKey(t, kind).Public()
		want := testSPKI(t, pub)
		cases := map[string][]byte{"canonical": want, "truncated": want[:len(want)-1], "none": nil}
		if k, ok := pub.(*ecdsa.PublicKey); ok {
			// The same form, another key's point.
			other, err := ecdsa.GenerateKey(k.Curve, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			cases["another key"] = testSPKI(t, &other.PublicKey)
		}
		for name, in := range cases {
			got, err := canonicalSPKI(pub, in)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s/%s: got %x, %v; want %x", kind, name, got, err, want)
			}
			if name == "canonical" && (kind == "p256" || kind == "p384") && &got[0] != &in[0] {
				t.Errorf("%s: encoded again", kind)
			}
		}
	}
}

// TestSubjectKeyIDFromSPKI: the key ID is the first 160 bits of the SHA-256
// of the key's bits (RFC 7093, 2, method 1), for every key type, and a
// malformed SubjectPublicKeyInfo is refused.
func TestSubjectKeyIDFromSPKI(t *testing.T) {
	for _, kind := range []string{"p256", "p384", "p521", "rsa2048", "ed25519"} {
		pub := testKey(t, kind).Public()
		spki := testSPKI(t, pub)
		var info struct {
			Algorithm pkix.AlgorithmIdentifier
			PublicKey asn1.BitString
		}
		if _, err := asn1.Unmarshal(spki, &info); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(info.PublicKey.Bytes)
		got, err := subjectKeyIDFromSPKI(spki)
		if err != nil || !bytes.Equal(got, sum[:20]) {
			t.Errorf("%s: %x, %v; want %x", kind, got, err, sum[:20])
		}
	}
	spki := testSPKI(t, testKey(t, "p256").Public())
	for name, in := range map[string][]byte{
		"empty":          nil,
		"truncated":      spki[:len(spki)-1],
		"trailing data":  append(bytes.Clone(spki), 0),
		"no key":         {0x30, 0x02, 0x30, 0x00},
		"not a SEQUENCE": append([]byte{0x31}, spki[1:]...),
	} {
		if _, err := subjectKeyIDFromSPKI(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestDERHeader: every length form appendHeader writes is the size tlvLen
// counts, and reads back as the length it was given.
func TestDERHeader(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 20} {
		b := append(appendHeader(nil, tagOctetString, n), make([]byte, n)...)
		if len(b) != tlvLen(n) {
			t.Errorf("n=%d: %d bytes, tlvLen says %d", n, len(b), tlvLen(n))
		}
		in := cryptobyte.String(b)
		var v cryptobyte.String
		if !in.ReadASN1(&v, cbasn1.OCTET_STRING) || !in.Empty() || len(v) != n {
			t.Errorf("n=%d: does not read back as DER", n)
		}
	}
}

// TestEncodeTBSRefuses: a serial that is not positive (which SPIFFE and
// RFC 5280 forbid; x509.CreateCertificate refuses only a negative one) and
// a time DER cannot carry are refused with an error, not written.
func TestEncodeTBSRefuses(t *testing.T) {
	key := testKey(t, "p256")
	l := newLeafSigner(testIssuer(t, key, pkix.Name{CommonName: "i"}, true), key)
	spki := testSPKI(t, key.Public())
	now := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	ok := leafFields{serial: big.NewInt(1), notBefore: now, notAfter: now.Add(time.Hour), id: spiffeid.RequireFromString("spiffe://td/x"), pub: key.Public(), spki: spki, ski: []byte{1}}
	for _, tc := range []struct {
		name string
		mod  func(*leafFields)
	}{
		{"zero serial", func(f *leafFields) { f.serial = big.NewInt(0) }},
		{"negative serial", func(f *leafFields) { f.serial = big.NewInt(-5) }},
		{"year 10000", func(f *leafFields) { f.notAfter = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"year -1", func(f *leafFields) { f.notBefore = time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := ok
			tc.mod(&f)
			if der, err := l.encodeTBS(f, spki, extKeyUsageSign, f.id.String()); err == nil {
				t.Fatalf("encoded %x", der)
			}
		})
	}
	if _, err := l.encodeTBS(ok, spki, extKeyUsageSign, ok.id.String()); err != nil {
		t.Fatalf("the unmodified fields: %v", err)
	}
}

// FuzzLeafSigner holds the leaf encoder to x509.CreateCertificate's bytes
// for any SPIFFE ID path, validity and serial: the TBSCertificate must be
// the same, or both must refuse.
func FuzzLeafSigner(f *testing.F) {
	f.Add("ns/a/sa/b", int64(1_795_000_000), int64(86_400), uint64(1), false)
	f.Add("ns/"+strings.Repeat("n", 200)+"/sa/s", int64(2_524_607_999), int64(1), uint64(1)<<63, true)
	f.Add("x", int64(-631_152_001), int64(3_600), uint64(255), false)
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	issuerKey := testKey(f, "p256")
	issuer := testIssuer(f, issuerKey, pkix.Name{CommonName: "i"}, true)
	l := newLeafSigner(issuer, issuerKey)
	f.Fuzz(func(t *testing.T, path string, notBefore, ttl int64, serial uint64, rsaSubject bool) {
		id, err := spiffeid.FromPath(td, "/"+path)
		if err != nil || serial == 0 {
			return
		}
		nb := time.Unix(notBefore, 0).UTC()
		na := nb.Add(time.Duration(ttl%(1<<32)) * time.Second)
		sub := testKey(t, map[bool]string{false: "p256", true: "rsa2048"}[rsaSubject])
		spki := testSPKI(t, sub.Public())
		f, err := newLeafFields(id, sub.Public(), spki, nb, na)
		if err != nil {
			t.Fatal(err)
		}
		f.serial = new(big.Int).SetUint64(serial)
		want, wantErr := x509.CreateCertificate(rand.Reader, leafTemplate(f), issuer, sub.Public(), issuerKey)
		got, gotErr := l.sign(f)
		if (wantErr != nil) != (gotErr != nil) {
			t.Fatalf("CreateCertificate: %v; leaf signer: %v", wantErr, gotErr)
		}
		if wantErr != nil {
			return
		}
		wantCert, err := x509.ParseCertificate(want)
		if err != nil {
			t.Fatal(err)
		}
		gotCert, err := x509.ParseCertificate(got)
		if err != nil {
			t.Fatalf("the leaf does not parse: %v", err)
		}
		if !bytes.Equal(gotCert.RawTBSCertificate, wantCert.RawTBSCertificate) {
			t.Fatalf("TBSCertificate differs\n got %x\nwant %x", gotCert.RawTBSCertificate, wantCert.RawTBSCertificate)
		}
	})
}

// messageSigner hashes for itself (crypto.MessageSigner), as a remote
// signer may, and counts the messages it was given.
type messageSigner struct {
	crypto.Signer
	messages *int
}

func (m messageSigner) SignMessage(r io.Reader, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	*m.messages++
	return crypto.SignMessage(m.Signer, r, msg, opts)
}

// TestLeafSignerSignerKinds: a signer given a digest and one that hashes
// the message itself both sign leaves that verify, and the second is given
// the message.
func TestLeafSignerSignerKinds(t *testing.T) {
	sub := testKey(t, "p256")
	spki := testSPKI(t, sub.Public())
	ski, err := subjectKeyIDFromSPKI(spki)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	f := leafFields{serial: big.NewInt(1), notBefore: now, notAfter: now.Add(time.Hour),
		id: spiffeid.RequireFromString("spiffe://td/ns/a/sa/b"), pub: sub.Public(), spki: spki, ski: ski}
	for _, kind := range []string{"p256", "rsa2048", "ed25519"} {
		key := testKey(t, kind)
		issuer := testIssuer(t, key, pkix.Name{CommonName: "i"}, true)
		var messages int
		for name, signer := range map[string]crypto.Signer{"digest": key, "message": messageSigner{key, &messages}} {
			der, err := newLeafSigner(issuer, signer).sign(f)
			if err != nil {
				t.Fatalf("%s/%s: %v", kind, name, err)
			}
			leaf, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := issuer.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature); err != nil {
				t.Fatalf("%s/%s: %v", kind, name, err)
			}
		}
		if messages != 1 {
			t.Errorf("%s: the signer that hashes for itself was given %d messages, want 1", kind, messages)
		}
	}
}

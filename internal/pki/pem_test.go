package pki

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

// selfSigned returns a throwaway certificate as PEM.
func selfSigned(t testing.TB, name string) string {
	t.Helper()
	key, err := GenerateKey(KeyECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<31, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func block(typ string, b []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}))
}

func TestParseCertificates(t *testing.T) {
	a, b := selfSigned(t, "a"), selfSigned(t, "b")
	tests := []struct {
		name    string
		in      string
		want    []string // common names
		wantErr string
	}{
		{name: "one", in: a, want: []string{"a"}},
		{name: "chain in order", in: a + b, want: []string{"a", "b"}},
		{name: "other blocks are skipped", in: block("PRIVATE KEY", []byte{1}) + a + block("EC PARAMETERS", nil) + b, want: []string{"a", "b"}},
		{name: "text around blocks", in: "subject=a\n" + a + "\n\n" + b + "\n", want: []string{"a", "b"}},
		{name: "stops at data that is not PEM", in: a + "-----BEGIN garbage" + b, want: []string{"a"}},
		{name: "empty", in: "", wantErr: "no PEM certificates"},
		{name: "not PEM", in: "not pem", wantErr: "no PEM certificates"},
		{name: "only a key", in: block("PRIVATE KEY", []byte{1}), wantErr: "no PEM certificates"},
		{name: "corrupt certificate", in: a + block("CERTIFICATE", []byte("junk")), wantErr: "x509: malformed certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certs, err := ParseCertificates([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, c := range certs {
				got = append(got, c.Subject.CommonName)
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseCertificate(t *testing.T) {
	a, b := selfSigned(t, "a"), selfSigned(t, "b")
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{name: "one", in: a},
		{name: "trailing white space", in: a + "\n \n"},
		{name: "empty", in: "", wantErr: "not PEM"},
		{name: "garbage", in: "-----BEGIN garbage", wantErr: "not PEM"},
		{name: "not a certificate", in: block("PRIVATE KEY", []byte{1}), wantErr: `PEM block is "PRIVATE KEY", want "CERTIFICATE"`},
		{name: "two certificates", in: a + b, wantErr: "trailing data after the certificate"},
		{name: "corrupt certificate", in: block("CERTIFICATE", []byte("junk")), wantErr: "x509: malformed certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseCertificate(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || c.Subject.CommonName != "a" {
				t.Fatalf("got %v, %v", c, err)
			}
		})
	}
}

// FuzzParseCertificates checks that PEM from files and agents never panics
// and that what it accepts is only certificates, at least one.
func FuzzParseCertificates(f *testing.F) {
	a := selfSigned(f, "a")
	f.Add([]byte(a))
	f.Add([]byte(a + block("PRIVATE KEY", []byte{1}) + a))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := ParseCertificates(b)
		if err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificates")
		}
		for _, c := range certs {
			if c == nil {
				t.Fatal("nil certificate")
			}
		}
	})
}

// FuzzParseCertificate checks that one element of a CA answer never panics
// and that an accepted one round-trips to the same DER.
func FuzzParseCertificate(f *testing.F) {
	a := selfSigned(f, "a")
	f.Add(a)
	f.Add(a + a)
	f.Add(block("CERTIFICATE", []byte("junk")))
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCertificate(s)
		if err != nil {
			return
		}
		again, err := ParseCertificate(block("CERTIFICATE", c.Raw))
		if err != nil || !again.Equal(c) {
			t.Fatalf("re-encoded certificate does not parse to itself: %v", err)
		}
	})
}

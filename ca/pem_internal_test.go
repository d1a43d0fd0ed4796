package ca

import (
	"crypto/rand"
	"encoding/pem"
	"testing"
)

// TestCertificatePEM: the hand-written encoder gives pem.EncodeToMemory's
// bytes for every length around its line and padding boundaries.
func TestCertificatePEM(t *testing.T) {
	for n := range 300 {
		der := make([]byte, n)
		_, _ = rand.Read(der)
		want := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		if got := certificatePEM(der); got != want {
			t.Fatalf("%d bytes: got\n%s\nwant\n%s", n, got, want)
		}
	}
}

func BenchmarkCertificatePEM(b *testing.B) {
	der := make([]byte, 700)
	b.Run("pem.EncodeToMemory", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		}
	})
	b.Run("certificatePEM", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = certificatePEM(der)
		}
	})
}

package sds_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"strings"
	"testing"

	"github.com/meshca/meshca/sds"
)

func TestGenerateKey(t *testing.T) {
	tests := []struct {
		name    string
		keyType string
		curve   elliptic.Curve // for ECDSA
		rsaBits int            // for RSA
		wantErr string
	}{
		{name: "default is P-256", keyType: "", curve: elliptic.P256()},
		{name: "ecdsa-p256", keyType: sds.KeyECDSAP256, curve: elliptic.P256()},
		{name: "ecdsa-p384", keyType: sds.KeyECDSAP384, curve: elliptic.P384()},
		{name: "case does not matter", keyType: "ECDSA-P384", curve: elliptic.P384()},
		{name: "rsa-2048", keyType: sds.KeyRSA2048, rsaBits: 2048},
		{name: "rsa-3072", keyType: sds.KeyRSA3072, rsaBits: 3072},
		{name: "rsa-4096", keyType: sds.KeyRSA4096, rsaBits: 4096},
		{name: "unknown", keyType: "ed25519", wantErr: `sds: unknown key type "ed25519"`},
		{name: "weak RSA", keyType: "rsa-1024", wantErr: "sds: unknown key type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := sds.GenerateKey(tt.keyType)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("GenerateKey(%q) error = %v, want %q", tt.keyType, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("GenerateKey(%q): %v", tt.keyType, err)
			}
			switch pub := key.Public().(type) {
			case *ecdsa.PublicKey:
				if tt.curve == nil || pub.Curve != tt.curve {
					t.Errorf("got ECDSA %s, want %v", pub.Curve.Params().Name, tt.curve)
				}
			case *rsa.PublicKey:
				if pub.N.BitLen() != tt.rsaBits {
					t.Errorf("got RSA %d bits, want %d", pub.N.BitLen(), tt.rsaBits)
				}
			default:
				t.Errorf("got a %T", pub)
			}
		})
	}
}

func TestParseKeyType(t *testing.T) {
	for _, kt := range sds.KeyTypes {
		got, err := sds.ParseKeyType(strings.ToUpper(kt))
		if err != nil || got != kt {
			t.Errorf("ParseKeyType(%q) = %q, %v; want %q", strings.ToUpper(kt), got, err, kt)
		}
	}
	if got, err := sds.ParseKeyType(""); err != nil || got != sds.KeyECDSAP256 {
		t.Errorf(`ParseKeyType("") = %q, %v; want the default %q`, got, err, sds.KeyECDSAP256)
	}
	if sds.KeyTypes[0] != sds.KeyECDSAP256 {
		t.Errorf("KeyTypes[0] = %q, want the default first", sds.KeyTypes[0])
	}
}

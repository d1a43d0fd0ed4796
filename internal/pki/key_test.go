package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"strings"
	"testing"
)

func TestGenerateKey(t *testing.T) {
	tests := []struct {
		name    string
		keyType KeyType
		curve   elliptic.Curve // for ECDSA
		rsaBits int            // for RSA
		wantErr string
	}{
		{name: "default is P-256", keyType: "", curve: elliptic.P256()},
		{name: "ecdsa-p256", keyType: KeyECDSAP256, curve: elliptic.P256()},
		{name: "ecdsa-p384", keyType: KeyECDSAP384, curve: elliptic.P384()},
		{name: "rsa-2048", keyType: KeyRSA2048, rsaBits: 2048},
		{name: "rsa-3072", keyType: KeyRSA3072, rsaBits: 3072},
		{name: "rsa-4096", keyType: KeyRSA4096, rsaBits: 4096},
		{name: "unknown", keyType: "ed25519", wantErr: `unknown key type "ed25519" (want one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096)`},
		{name: "weak RSA", keyType: "rsa-1024", wantErr: "unknown key type"},
		{name: "case is not folded", keyType: "ECDSA-P384", wantErr: "unknown key type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := GenerateKey(tt.keyType)
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
			if !SamePublicKey(key.Public(), key.Public()) {
				t.Error("SamePublicKey(k, k) = false")
			}
		})
	}
}

func TestParseKeyType(t *testing.T) {
	for _, kt := range keyTypes {
		got, err := ParseKeyType(strings.ToUpper(string(kt)))
		if err != nil || got != kt {
			t.Errorf("ParseKeyType(%q) = %q, %v; want %q", strings.ToUpper(string(kt)), got, err, kt)
		}
	}
	if got, err := ParseKeyType(""); err != nil || got != KeyECDSAP256 {
		t.Errorf(`ParseKeyType("") = %q, %v; want the default %q`, got, err, KeyECDSAP256)
	}
	if keyTypes[0] != KeyECDSAP256 {
		t.Errorf("keyTypes[0] = %q, want the default first", keyTypes[0])
	}
	const want = `unknown key type "dsa-1024" (want one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096)`
	if _, err := ParseKeyType("dsa-1024"); err == nil || err.Error() != want {
		t.Errorf("ParseKeyType(dsa-1024) error = %v, want %q", err, want)
	}
}

func TestSamePublicKey(t *testing.T) {
	a, _ := GenerateKey(KeyECDSAP256)
	b, _ := GenerateKey(KeyECDSAP256)
	if SamePublicKey(a.Public(), b.Public()) {
		t.Error("two keys are the same")
	}
	if SamePublicKey(struct{}{}, a.Public()) {
		t.Error("a key without Equal matched")
	}
}

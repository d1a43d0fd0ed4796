package floor

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"
)

// KeySet holds the API server's service-account verification keys by key ID.
type KeySet map[string]crypto.PublicKey

// ParseJWKS reads a JSON Web Key Set of EC P-256 and RSA keys, as the API
// server serves at /openid/v1/jwks.
func ParseJWKS(b []byte) (KeySet, error) {
	var set struct {
		Keys []struct {
			Kty, Kid, Crv, X, Y, N, E string
		} `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("floor: JWKS: %w", err)
	}
	keys := KeySet{}
	for _, k := range set.Keys {
		switch {
		case k.Kty == "EC" && k.Crv == "P-256":
			x, err1 := base64.RawURLEncoding.DecodeString(k.X)
			y, err2 := base64.RawURLEncoding.DecodeString(k.Y)
			if err := errors.Join(err1, err2); err != nil || len(x) != 32 || len(y) != 32 {
				return nil, fmt.Errorf("floor: JWKS: bad EC key %q", k.Kid)
			}
			pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
			if err != nil {
				return nil, fmt.Errorf("floor: JWKS: %w", err)
			}
			keys[k.Kid] = pub
		case k.Kty == "RSA":
			n, err1 := b64int(k.N)
			e, err2 := b64int(k.E)
			if err := errors.Join(err1, err2); err != nil {
				return nil, err
			}
			keys[k.Kid] = &rsa.PublicKey{N: n, E: int(e.Int64())}
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("floor: JWKS holds no usable key")
	}
	return keys, nil
}

func b64int(s string) (*big.Int, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("floor: JWKS: %w", err)
	}
	return new(big.Int).SetBytes(b), nil
}

// Verifier checks ServiceAccount tokens offline: signature (ES256 or RS256)
// by a key of Keys, iss, an aud among Audiences, exp and nbf.
type Verifier struct {
	Keys      KeySet
	Issuer    string
	Audiences []string
}

// Verify returns the namespace and ServiceAccount the token proves.
func (v *Verifier) Verify(tok string) (ns, sa string, err error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return "", "", errors.New("floor: token is not a JWT")
	}
	var hdr struct{ Alg, Kid string }
	if err := decodePart(parts[0], &hdr); err != nil {
		return "", "", err
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return "", "", errors.New("floor: token signature is not base64url")
	}
	digest := sha256.Sum256([]byte(tok[:len(parts[0])+1+len(parts[1])]))
	switch key := v.Keys[hdr.Kid].(type) {
	case *ecdsa.PublicKey:
		if hdr.Alg != "ES256" || len(sig) != 64 ||
			!ecdsa.Verify(key, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			return "", "", errors.New("floor: bad token signature")
		}
	case *rsa.PublicKey:
		if hdr.Alg != "RS256" || rsa.VerifyPKCS1v15(key, crypto.SHA256, digest[:], sig) != nil {
			return "", "", errors.New("floor: bad token signature")
		}
	default:
		return "", "", errors.New("floor: unknown token key")
	}
	var c struct {
		Iss, Sub string
		Aud      audience
		Exp, Nbf int64
	}
	if err := decodePart(parts[1], &c); err != nil {
		return "", "", err
	}
	now := time.Now().Unix()
	switch {
	case c.Iss != v.Issuer:
		return "", "", errors.New("floor: wrong issuer")
	case !slices.ContainsFunc(c.Aud, func(a string) bool { return slices.Contains(v.Audiences, a) }):
		return "", "", errors.New("floor: wrong audience")
	case c.Exp == 0 || now > c.Exp || (c.Nbf != 0 && now < c.Nbf):
		return "", "", errors.New("floor: token expired or not yet valid")
	}
	f := strings.Split(c.Sub, ":")
	if len(f) != 4 || f[0] != "system" || f[1] != "serviceaccount" || f[2] == "" || f[3] == "" {
		return "", "", errors.New("floor: not a ServiceAccount token")
	}
	return f[2], f[3], nil
}

func decodePart(s string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return errors.New("floor: token part is not base64url")
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("floor: token: %w", err)
	}
	return nil
}

// audience is a JWT "aud": one string or a list.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*a = audience{one}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(a))
}

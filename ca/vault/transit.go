package vault

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/hashicorp/vault/api"
)

// TransitKind names Transit as the root key's keeper in the store
// (store.SealedKey.Alg of the root).
const TransitKind = "vault-transit"

// keyTypeOf checks a Transit key type meshca can make a root with: ECDSA
// P-256 (default) or P-384, RSA 2048, 3072 or 4096.
func keyTypeOf(t string) (string, error) {
	switch t {
	case "ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096":
		return t, nil
	}
	return "", fmt.Errorf("vault: Transit key type %q cannot sign a root: want ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096", t)
}

// TransitKeys keeps the root's private key in Vault Transit (a ca.RootKeys):
// the key never leaves Vault, and every signature is one transit/sign call
// with the prehashed digest, made only when an intermediate (or a new root)
// is signed. A key is referred to as "<mount>/keys/<name>:v<version>": a
// root stays bound to the key version it was made with, whatever later
// rotations of the Transit key do.
type TransitKeys struct {
	c *Client
}

// Transit returns the Transit keeper of the configured key
// (Config.TransitKey).
func (c *Client) Transit() (*TransitKeys, error) {
	if c.cfg.TransitKey == "" {
		return nil, errors.New("vault: no Transit key configured (--vault-transit-key)")
	}
	return &TransitKeys{c: c}, nil
}

// Kind implements ca.RootKeys.
func (t *TransitKeys) Kind() string { return TransitKind }

// Current implements ca.RootKeys: the latest version of the configured
// key, created (non-exportable, Config.TransitKeyType) when Vault has none.
func (t *TransitKeys) Current(ctx context.Context) (crypto.Signer, string, error) {
	info, err := t.keyInfo(ctx)
	var re *api.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusNotFound || err == nil && info == nil {
		t.c.cfg.Logger.Info("creating the root key in vault transit", "mount", t.c.cfg.TransitMount, "key", t.c.cfg.TransitKey, "type", t.c.cfg.TransitKeyType)
		if _, err := t.c.call(ctx, "transit-create", t.path("keys"), map[string]any{"type": t.c.cfg.TransitKeyType, "exportable": false}, false); err != nil {
			return nil, "", err
		}
		info, err = t.keyInfo(ctx)
	}
	if err != nil {
		return nil, "", err
	}
	return t.signerFor(info, info.latest)
}

// Next implements ca.RootKeys: it rotates the Transit key and returns its
// new version, for a new root.
func (t *TransitKeys) Next(ctx context.Context) (crypto.Signer, string, error) {
	if _, err := t.c.call(ctx, "transit-rotate", t.path("keys", "rotate"), nil, false); err != nil {
		return nil, "", err
	}
	info, err := t.keyInfo(ctx)
	if err != nil {
		return nil, "", err
	}
	if info == nil {
		return nil, "", fmt.Errorf("vault: Transit key %s is gone after its rotation", t.c.cfg.TransitKey)
	}
	return t.signerFor(info, info.latest)
}

// Open implements ca.RootKeys. It calls nothing: the signer's first Sign
// does, and checks the signature against pub.
func (t *TransitKeys) Open(ref string, pub crypto.PublicKey) (crypto.Signer, error) {
	mount, name, version, err := parseRef(ref)
	if err != nil {
		return nil, err
	}
	return newTransitSigner(t.c, mount, name, version, pub)
}

// path is a path under the configured key: <mount>/<kind>/<key>/<rest>.
func (t *TransitKeys) path(kind string, rest ...string) string {
	return joinPath(append([]string{t.c.cfg.TransitMount, kind, t.c.cfg.TransitKey}, rest...)...)
}

// transitKey is what meshca reads of a Transit key.
type transitKey struct {
	name   string
	typ    string
	latest int
	// public holds each version's public key (PEM).
	public map[int]string
	// exportable says the key may leave Vault.
	exportable bool
}

// keyInfo reads the configured key; nil, nil when it does not exist.
func (t *TransitKeys) keyInfo(ctx context.Context) (*transitKey, error) {
	s, err := t.c.call(ctx, "transit-read", t.path("keys"), nil, true)
	if err != nil {
		return nil, err
	}
	if s == nil || s.Data == nil {
		return nil, nil
	}
	k := &transitKey{name: t.c.cfg.TransitKey, public: map[int]string{}}
	k.typ, _ = s.Data["type"].(string)
	k.exportable, _ = s.Data["exportable"].(bool)
	latest, err := jsonNumber(s.Data["latest_version"])
	if err != nil {
		return nil, fmt.Errorf("vault: Transit key %s: latest_version: %w", k.name, err)
	}
	k.latest = int(latest)
	versions, _ := s.Data["keys"].(map[string]any)
	for v, info := range versions {
		n, err := strconv.Atoi(v)
		if err != nil {
			continue
		}
		if m, ok := info.(map[string]any); ok {
			k.public[n], _ = m["public_key"].(string)
		}
	}
	if _, err := keyTypeOf(k.typ); err != nil {
		return nil, fmt.Errorf("vault: Transit key %s is of type %q, which cannot sign a root: use an ecdsa-p256 (or ecdsa-p384, rsa-2048/3072/4096) key", k.name, k.typ)
	}
	if k.exportable {
		return nil, fmt.Errorf("vault: Transit key %s is exportable: the root key must never leave Vault; use a key created with exportable=false", k.name)
	}
	return k, nil
}

func (t *TransitKeys) signerFor(k *transitKey, version int) (crypto.Signer, string, error) {
	pub, err := parsePublicKey(k.public[version])
	if err != nil {
		return nil, "", fmt.Errorf("vault: Transit key %s version %d: %w", k.name, version, err)
	}
	s, err := newTransitSigner(t.c, t.c.cfg.TransitMount, k.name, version, pub)
	if err != nil {
		return nil, "", err
	}
	return s, formatRef(t.c.cfg.TransitMount, k.name, version), nil
}

func formatRef(mount, name string, version int) string {
	return joinPath(mount, "keys", name) + ":v" + strconv.Itoa(version)
}

// parseRef reads "<mount>/keys/<name>:v<version>".
func parseRef(ref string) (mount, name string, version int, err error) {
	path, v, ok := strings.Cut(ref, ":v")
	if ok {
		version, err = strconv.Atoi(v)
	}
	i := strings.LastIndex(path, "/keys/")
	if !ok || err != nil || version < 1 || i <= 0 || strings.Contains(path[i+len("/keys/"):], "/") || path[i+len("/keys/"):] == "" {
		return "", "", 0, fmt.Errorf("vault: malformed Transit key reference %q: want <mount>/keys/<name>:v<version>", ref)
	}
	return path[:i], path[i+len("/keys/"):], version, nil
}

func parsePublicKey(p string) (crypto.PublicKey, error) {
	b, _ := pem.Decode([]byte(p))
	if b == nil {
		return nil, errors.New("no PEM public key")
	}
	pub, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	return pub, nil
}

// transitSigner is a crypto.Signer whose key is a Transit key version.
type transitSigner struct {
	c       *Client
	mount   string
	name    string
	version int
	pub     crypto.PublicKey
	// ctx bounds the Transit calls (see WithContext); Background when
	// none was given.
	ctx context.Context
}

// WithContext implements ca.ContextSigner: the returned signer's Transit
// calls end with ctx (a rotation cancelled at shutdown, or a leader's job
// stopped when it loses its lease).
func (s *transitSigner) WithContext(ctx context.Context) crypto.Signer {
	c := *s
	c.ctx = ctx
	return &c
}

func newTransitSigner(c *Client, mount, name string, version int, pub crypto.PublicKey) (*transitSigner, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("vault: Transit key %s: curve %s is not supported", name, k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
	default:
		return nil, fmt.Errorf("vault: Transit key %s: %T keys are not supported", name, pub)
	}
	return &transitSigner{c: c, mount: mount, name: name, version: version, pub: pub, ctx: context.Background()}, nil
}

// Public implements crypto.Signer.
func (s *transitSigner) Public() crypto.PublicKey { return s.pub }

// Sign implements crypto.Signer: transit/sign with the prehashed digest,
// key_version pinned, ASN.1 ECDSA or PKCS #1 v1.5 / PSS RSA signatures as
// crypto/x509 expects. The signature is verified with the public key
// before it is returned.
func (s *transitSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var alg string
	switch opts.HashFunc() {
	case crypto.SHA256:
		alg = "sha2-256"
	case crypto.SHA384:
		alg = "sha2-384"
	case crypto.SHA512:
		alg = "sha2-512"
	default:
		return nil, fmt.Errorf("vault: Transit signing with hash %v is not supported", opts.HashFunc())
	}
	if len(digest) != opts.HashFunc().Size() {
		return nil, errors.New("vault: digest length does not match the hash")
	}
	data := map[string]any{
		"input": base64.StdEncoding.EncodeToString(digest), "prehashed": true, "hash_algorithm": alg,
		"key_version": s.version, "marshaling_algorithm": "asn1",
	}
	pss, isPSS := opts.(*rsa.PSSOptions)
	if _, ok := s.pub.(*rsa.PublicKey); ok {
		data["signature_algorithm"] = "pkcs1v15"
		if isPSS {
			data["signature_algorithm"] = "pss"
			if pss.SaltLength != rsa.PSSSaltLengthEqualsHash {
				return nil, errors.New("vault: only PSS with the salt length of the hash is supported")
			}
			data["salt_length"] = "hash"
		}
	}
	// crypto.Signer has no context: the call is bounded by the one given
	// to WithContext, if any, and by the client's timeout.
	sec, err := s.c.call(s.ctx, "transit-sign", joinPath(s.mount, "sign", s.name), data, false)
	if err != nil {
		return nil, err
	}
	if sec == nil || sec.Data == nil {
		return nil, errors.New("vault: transit/sign answered without a signature")
	}
	out, _ := sec.Data["signature"].(string)
	prefix := "vault:v" + strconv.Itoa(s.version) + ":"
	if !strings.HasPrefix(out, prefix) {
		return nil, fmt.Errorf("vault: transit/sign answered %.20q..., not a signature by key version %d", out, s.version)
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(out, prefix))
	if err != nil {
		return nil, fmt.Errorf("vault: transit/sign signature: %w", err)
	}
	if err := verify(s.pub, digest, sig, opts); err != nil {
		return nil, fmt.Errorf("vault: Transit key %s version %d signed with another key than the root's: %w", s.name, s.version, err)
	}
	return sig, nil
}

func verify(pub crypto.PublicKey, digest, sig []byte, opts crypto.SignerOpts) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return errors.New("ECDSA signature does not verify")
		}
		return nil
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			return rsa.VerifyPSS(k, opts.HashFunc(), digest, sig, pss)
		}
		return rsa.VerifyPKCS1v15(k, opts.HashFunc(), digest, sig)
	}
	return fmt.Errorf("%T keys are not supported", pub)
}

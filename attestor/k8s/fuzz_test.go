package k8s_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejson "github.com/go-jose/go-jose/v4/json"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

// FuzzInformerClaims signs an arbitrary "kubernetes.io" claim, in an
// otherwise valid token for system:serviceaccount:foo:bar, with the
// cluster's key, and attests it against caches holding the ServiceAccount
// foo/bar (UID sa-uid-1) and the pod foo/pod-1 (UID pod-uid-1, on node-1).
// What the informer mode accepts names exactly those objects: the
// namespace and ServiceAccount with its UID, no pod or that pod with its
// UID, no node or that pod's node, no Secret, and proves foo/bar.
// Everything else is refused as Unauthenticated (or PermissionDenied by the
// lists), never Unavailable: the caches are synced.
func FuzzInformerClaims(f *testing.F) {
	inf, _ := fakeCluster(f, liveSA(), livePod())
	clk := clocktest.New(epoch)
	a, err := k8s.NewInformer(k8s.InformerConfig{JWKSConfig: k8s.JWKSConfig{Config: k8s.Config{TrustDomain: td, Clock: clk}, Keys: staticKeys(f, clk)}, Informers: inf})
	if err != nil {
		f.Fatal(err)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: signingKey()}, (&jose.SignerOptions{}).WithHeader("kid", kid))
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		`{"namespace":"foo","serviceaccount":{"name":"bar","uid":"sa-uid-1"},"pod":{"name":"pod-1","uid":"pod-uid-1"},"node":{"name":"node-1","uid":"n"}}`,
		`{"namespace":"foo","serviceaccount":{"name":"bar","uid":"sa-uid-1"}}`,
		`{"namespace":"foo","serviceaccount":{"name":"bar","uid":"sa-uid-2"}}`,
		`{"namespace":"foo","serviceaccount":{"name":"bar","uid":"sa-uid-1"},"pod":{"name":"pod-1"}}`,
		`{"namespace":"foo","serviceaccount":{"name":"bar","uid":"sa-uid-1"},"pod":null,"node":{"name":"node-1"}}`,
		`{"namespace":"foo","serviceaccount":{"name":"bar","uid":"sa-uid-1"},"secret":{"name":"s","uid":"x"}}`,
		`{"namespace":"foo","serviceaccount":{"name":"bar","uid":"sa-uid-1"},"pod":{"name":"pod-1","uid":"pod-uid-1"},"pod":{"name":"x","uid":"y"}}`,
		`{"namespace":"foo","serviceaccount":{"name":"bar","uid":"sa-uid-1","UID":"x"}}`,
		`null`, `[]`, `{"namespace":7}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, k8sClaim []byte) {
		if !json.Valid(k8sClaim) {
			return // the API server signs JSON; go-jose cannot embed anything else
		}
		tok, err := jwt.Signed(sig).Claims(jwt.Claims{
			Issuer: k8s.DefaultIssuer, Subject: "system:serviceaccount:foo:bar", Audience: jwt.Audience{"meshca"},
			// Older than CatchUpAge: decided at once (catching up is
			// TestInformerCatchUp's).
			IssuedAt: jwt.NewNumericDate(epoch.Add(-time.Minute)), Expiry: jwt.NewNumericDate(epoch.Add(time.Hour)),
		}).Claims(map[string]any{"kubernetes.io": json.RawMessage(k8sClaim)}).Serialize()
		if err != nil {
			return
		}
		id, err := a.Attest(context.Background(), attestor.Credential{BearerToken: tok})
		if err != nil {
			if !errors.Is(err, attestor.ErrUnauthenticated) && !errors.Is(err, attestor.ErrPermissionDenied) {
				t.Fatalf("Attest() = %v, want Unauthenticated or PermissionDenied", err)
			}
			return
		}
		// Decoded as go-jose decodes claims, case-sensitively, as the API
		// server does too.
		type ref struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		}
		var c struct {
			Namespace      string `json:"namespace"`
			ServiceAccount ref    `json:"serviceaccount"`
			Pod            *ref   `json:"pod"`
			Node           *ref   `json:"node"`
			Secret         any    `json:"secret"`
		}
		if err := josejson.Unmarshal(k8sClaim, &c); err != nil {
			t.Fatalf("accepted a claim that does not decode: %v", err)
		}
		switch {
		case id.ID != sa("foo", "bar"):
			t.Fatalf("accepted as %v", id.ID)
		case c.Namespace != "foo", c.ServiceAccount.Name != "bar", c.ServiceAccount.UID != "sa-uid-1":
			t.Fatalf("accepted another ServiceAccount: %s", k8sClaim)
		case c.Pod != nil && (c.Pod.Name != "pod-1" || c.Pod.UID != "pod-uid-1"):
			t.Fatalf("accepted another pod: %s", k8sClaim)
		case c.Node != nil && (c.Pod == nil || c.Node.Name != "node-1"):
			t.Fatalf("accepted another node, or a Node-bound token: %s", k8sClaim)
		case c.Secret != nil:
			t.Fatalf("accepted a Secret-bound token: %s", k8sClaim)
		}
	})
}

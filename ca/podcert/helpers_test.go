package podcert_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"log/slog"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	certificatesv1beta1 "k8s.io/api/certificates/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/testlog"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// Key types, as the kubelet names them (podCertificate.keyType).
const (
	keyP256    = "ECDSAP256"
	keyP384    = "ECDSAP384"
	keyP521    = "ECDSAP521"
	keyRSA3072 = "RSA3072"
	keyEd25519 = "ED25519"
)

var (
	keysMu sync.Mutex
	keys   = map[string]crypto.Signer{}
)

// key returns a key of type typ, made once per test binary (RSA 3072 takes
// a while) unless fresh.
func key(t testing.TB, typ string, fresh bool) crypto.Signer {
	t.Helper()
	keysMu.Lock()
	defer keysMu.Unlock()
	if k, ok := keys[typ]; ok && !fresh {
		return k
	}
	var (
		k   crypto.Signer
		err error
	)
	switch typ {
	case keyP256:
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case keyP384:
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case keyP521:
		k, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case keyRSA3072:
		k, err = rsa.GenerateKey(rand.Reader, 3072)
	case keyEd25519:
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("key type %s", typ)
	}
	if err != nil {
		t.Fatal(err)
	}
	if !fresh {
		keys[typ] = k
	}
	return k
}

func pkix(t testing.TB, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// proof is the kubelet's proof of possession for k.
func proof(t testing.TB, k crypto.Signer, podUID types.UID) []byte {
	t.Helper()
	sig, err := kubeenv.ProofOfPossession(k, podUID)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// pod names a pod, its ServiceAccount and its node, with their UIDs.
type pod struct {
	ns, name, sa, node  string
	uid, saUID, nodeUID types.UID
}

// request is a PodCertificateRequest for p, to signer, for k.
func request(t testing.TB, p pod, name, signer string, k crypto.Signer) *certificatesv1beta1.PodCertificateRequest {
	t.Helper()
	return &certificatesv1beta1.PodCertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: name},
		Spec: certificatesv1beta1.PodCertificateRequestSpec{
			SignerName: signer, PodName: p.name, PodUID: p.uid, ServiceAccountName: p.sa, ServiceAccountUID: p.saUID,
			NodeName: types.NodeName(p.node), NodeUID: p.nodeUID,
			PKIXPublicKey: pkix(t, k), ProofOfPossession: proof(t, k, p.uid),
		},
	}
}

// condition returns req's terminal condition, nil if none.
func condition(req *certificatesv1beta1.PodCertificateRequest) *metav1.Condition {
	for i, c := range req.Status.Conditions {
		switch c.Type {
		case certificatesv1beta1.PodCertificateRequestConditionTypeIssued, certificatesv1beta1.PodCertificateRequestConditionTypeDenied,
			certificatesv1beta1.PodCertificateRequestConditionTypeFailed:
			return &req.Status.Conditions[i]
		}
	}
	return nil
}

// newAuthority is a CA on st, whose clock is clk (nil: the wall clock).
func newAuthority(t testing.TB, st store.Store, clk *clocktest.Fake) *ca.Authority {
	t.Helper()
	cfg := ca.Config{TrustDomain: td, Store: st}
	if clk != nil {
		cfg.Clock = clk
	}
	a, err := ca.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// admission is the allow and deny lists of `meshca server`'s defaults
// (kube-system denied), plus deny.
func admission(t testing.TB, deny ...string) *k8s.Admission {
	t.Helper()
	cfg := k8s.Config{TrustDomain: td}
	if len(deny) > 0 {
		cfg.Deny = deny
	}
	adm, err := k8s.NewAdmission(k8s.AdmissionConfig{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	return adm
}

// chainOf parses a certificateChain.
func chainOf(t testing.TB, s string) []*x509.Certificate {
	t.Helper()
	out, err := pki.ParseCertificates([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// metrics records what a Controller reports.
type metrics struct {
	mu       sync.Mutex
	requests map[string]int // "result/reason"
	issued   []time.Duration
}

func (m *metrics) Request(result, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.requests == nil {
		m.requests = map[string]int{}
	}
	m.requests[result+"/"+reason]++
}

func (m *metrics) Issued(took time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.issued = append(m.issued, took)
}

// snapshot is a copy of the counts, to print.
func (m *metrics) snapshot() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.requests)
}

func (m *metrics) count(result, reason string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.requests[result+"/"+reason]
}

// logger writes to a buffer the test may read.
func logger() (*slog.Logger, *testlog.Buffer) {
	var b testlog.Buffer
	return slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug})), &b
}

// numRecords is how many issuance records st holds.
func numRecords(t testing.TB, st store.Store) int {
	t.Helper()
	recs, err := st.Issuances(context.Background(), store.IssuanceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

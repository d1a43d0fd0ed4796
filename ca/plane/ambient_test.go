package plane

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/k8s"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/testca"
)

// createNode creates the Node name. No kubelet runs: nothing else
// touches it.
func createNode(t *testing.T, env *kubeenv.Env, name string) {
	t.Helper()
	_, err := env.Client.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
}

// schedulePod creates the pod ns/name of ServiceAccount sa on node and,
// as the kubelet would, sets its phase (the API server creates it
// Pending).
func schedulePod(t *testing.T, env *kubeenv.Env, ns, name, sa, node string, phase corev1.PodPhase) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	pods := env.Client.CoreV1().Pods(ns)
	p, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node, AutomountServiceAccountToken: new(bool),
			Containers: []corev1.Container{{Name: "app", Image: "example.org/app:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	if phase != corev1.PodPending {
		p.Status.Phase = phase
		if p, err = pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("pod %s/%s status: %v", ns, name, err)
		}
	}
	return p
}

// ztunnelToken is what ztunnel presents: a token of its ServiceAccount
// bound to its pod, for Istio's CA audience.
func ztunnelToken(t *testing.T, env *kubeenv.Env, pod *corev1.Pod) string {
	t.Helper()
	secs := int64(3600)
	resp, err := env.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(context.Background(), pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"istio-ca"}, ExpirationSeconds: &secs,
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Status.Token
}

// ztunnelRequest sends the CSR API the request ztunnel's CA client
// (src/identity/caclient.rs) sends for id: a CSR whose one URI SAN is id,
// validity_duration its default secret TTL (24h), the bearer token in the
// authorization header, and, unless impersonated is nil, the metadata
// Struct {"ImpersonatedIdentity": <string value>}.
func ztunnelRequest(t *testing.T, p *Plane, token string, id spiffeid.ID, impersonated *structpb.Value) ([]string, error) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.Authority().RootsPEM())
	conn, err := grpc.NewClient(p.Addr("grpc").String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, csr := testca.NewCSR(t, id)
	req := &pb.IstioCertificateRequest{Csr: string(csr), ValidityDuration: 86400}
	if impersonated != nil {
		req.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{"ImpersonatedIdentity": impersonated}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	resp, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, req)
	return resp.GetCertChain(), err
}

// ztunnelChain reads a response chain as ztunnel's WorkloadCertificate
// does (src/tls/certificate.rs): the first element is the leaf, each
// element between is one intermediate, the last holds the roots (one or
// more). Each of the first ones must be exactly one PEM certificate. It
// returns the leaf verified up to those roots.
func ztunnelChain(t *testing.T, chain []string) *x509.Certificate {
	t.Helper()
	if len(chain) < 2 {
		t.Fatalf("chain of %d elements: ztunnel needs a leaf and the roots", len(chain))
	}
	one := func(s string) *x509.Certificate {
		c, err := pki.ParseCertificate(s)
		if err != nil {
			t.Fatalf("chain element is not exactly one PEM certificate (%v): %q", err, s)
		}
		return c
	}
	leaf := one(chain[0])
	inters := x509.NewCertPool()
	for _, s := range chain[1 : len(chain)-1] {
		c := one(s)
		if !c.IsCA {
			t.Fatalf("chain element %s between leaf and roots is not a CA", c.Subject)
		}
		inters.AddCert(c)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(chain[len(chain)-1])) {
		t.Fatal("last chain element holds no roots")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("leaf does not verify with the chain's intermediates up to its roots: %v", err)
	}
	return leaf
}

// TestAmbientZtunnelAgainstAPIServer: `meshca server --k8s-attestation
// informer --trusted-node-accounts istio-system/ztunnel` against a real
// API server with Nodes and Pods (no kubelet: pods are scheduled by
// setting spec.nodeName, and set Running by a status update). ztunnel on
// node n1 gets certificates for the identities of pods on n1, in the
// chain order it reads, including a pod's asked for as soon as it is
// scheduled; every other request for another identity is refused with one
// opaque Unauthenticated.
func TestAmbientZtunnelAgainstAPIServer(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	createNode(t, env, "n1")
	createNode(t, env, "n2")
	for _, sa := range []string{"istio-system/ztunnel", "istio-system/intruder", "app/web", "app/db", "app/lonely", "app/late"} {
		ns, name, _ := strings.Cut(sa, "/")
		env.CreateServiceAccount(t, ns, name)
	}
	zt := schedulePod(t, env, "istio-system", "ztunnel-n1", "ztunnel", "n1", corev1.PodRunning)
	intruder := schedulePod(t, env, "istio-system", "intruder-n1", "intruder", "n1", corev1.PodRunning)
	schedulePod(t, env, "app", "web-1", "web", "n1", corev1.PodPending) // starting: ztunnel asks for it now
	schedulePod(t, env, "app", "db-1", "db", "n2", corev1.PodRunning)
	recreated := schedulePod(t, env, "istio-system", "ztunnel-old", "ztunnel", "n1", corev1.PodRunning)
	staleToken := ztunnelToken(t, env, recreated)

	fw := env.Forward(t)
	p, err := Start(ctx, Config{TrustDomain: td, DataDir: t.TempDir(), GRPCAddr: "127.0.0.1:0", MonitorAddr: "127.0.0.1:0",
		Kubernetes: Kubernetes{Mode: K8sInformer, Kubeconfig: kubeconfig(t, env, fw.Addr()), Audiences: []string{"istio-ca"},
			TrustedNodeAccounts: []string{"istio-system/ztunnel"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop() })
	clocktest.Eventually(t, "plane ready", func() bool { code, _ := readyz(t, p); return code == http.StatusOK })

	ztToken := ztunnelToken(t, env, zt)
	id := func(ns, sa string) spiffeid.ID { return spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+sa) }
	web := id("app", "web")

	t.Run("pod on the caller's node", func(t *testing.T) {
		chain, err := ztunnelRequest(t, p, ztToken, web, structpb.NewStringValue(web.String()))
		if err != nil {
			t.Fatalf("ztunnel on n1 asking for a pod's identity on n1: %v", err)
		}
		leaf := ztunnelChain(t, chain)
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != web.String() {
			t.Fatalf("issued %v, want exactly %s", leaf.URIs, web)
		}
		rec, err := p.store.Issuance(ctx, leaf.SerialNumber.Text(16))
		if err != nil {
			t.Fatal(err)
		}
		if rec.CredentialKind != k8s.KindImpersonation || rec.Requester != "system:serviceaccount:istio-system:ztunnel" ||
			rec.Details["impersonated-by"] != id("istio-system", "ztunnel").String() || rec.Details["node"] != "n1" ||
			rec.Details["pod-name"] != "ztunnel-n1" || rec.Details["pod-uid"] != string(zt.UID) {
			t.Fatalf("issuance record %+v does not say ztunnel-n1 on n1 impersonated web", rec)
		}
	})
	t.Run("no metadata: the caller's own identity, as before", func(t *testing.T) {
		chain, err := ztunnelRequest(t, p, ztToken, id("istio-system", "ztunnel"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if leaf := ztunnelChain(t, chain); leaf.URIs[0].String() != id("istio-system", "ztunnel").String() {
			t.Fatalf("issued %v", leaf.URIs)
		}
		_, err = ztunnelRequest(t, p, ztToken, web, nil)
		wantCode(t, "another identity's CSR without ImpersonatedIdentity", err, codes.PermissionDenied, "")
	})
	t.Run("a pod scheduled to the node after start", func(t *testing.T) {
		late := id("app", "late")
		_, err := ztunnelRequest(t, p, ztToken, late, structpb.NewStringValue(late.String()))
		wantCode(t, "before the pod exists", err, codes.Unauthenticated, "request impersonation authentication failure")
		// meshca's watch is slowed: its events arrive 200 ms late.
		fw.Delay(200 * time.Millisecond)
		defer fw.Delay(0)
		schedulePod(t, env, "app", "late-1", "late", "n1", corev1.PodPending)
		// At once, as ztunnel asks when it learns of the pod: the check
		// waits for meshca's watch to see the pod bound to n1.
		if _, err := ztunnelRequest(t, p, ztToken, late, structpb.NewStringValue(late.String())); err != nil {
			t.Fatalf("the first request after the pod was scheduled to n1, meshca's watch 200 ms behind: %v", err)
		}
	})

	// The old ztunnel pod is replaced by one of the same name: its token
	// names the former UID.
	if err := env.Client.CoreV1().Pods("istio-system").Delete(ctx, recreated.Name, *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	again := schedulePod(t, env, "istio-system", recreated.Name, "ztunnel", "n1", corev1.PodRunning)
	if again.UID == recreated.UID {
		t.Fatal("the recreated pod kept its UID")
	}
	refusals := []struct {
		name, token string
		csrFor      spiffeid.ID
		requested   *structpb.Value
	}{
		{"pod on another node", ztToken, id("app", "db"), structpb.NewStringValue(id("app", "db").String())},
		{"untrusted caller with a pod on the node", ztunnelToken(t, env, intruder), web, structpb.NewStringValue(web.String())},
		{"ServiceAccount with no pod on the node", ztToken, id("app", "lonely"), structpb.NewStringValue(id("app", "lonely").String())},
		{"pod UID mismatch (the token's pod was recreated)", staleToken, web, structpb.NewStringValue(web.String())},
		{"malformed: not of the ns/sa form", ztToken, web, structpb.NewStringValue("spiffe://example.org/ns/app")},
		{"malformed: another trust domain", ztToken, web, structpb.NewStringValue("spiffe://other.org/ns/app/sa/web")},
		{"malformed: not a string", ztToken, web, structpb.NewNumberValue(7)},
		{"malformed: empty", ztToken, web, structpb.NewStringValue("")},
	}
	for _, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			var err error
			clocktest.Eventually(t, "refused", func() bool {
				_, err = ztunnelRequest(t, p, r.token, r.csrFor, r.requested)
				return status.Code(err) == codes.Unauthenticated
			})
			msg := status.Convert(err).Message()
			for _, leak := range []string{"n1", "n2", "node", "pod", "db", "lonely", "trusted"} {
				if strings.Contains(msg, leak) && !strings.Contains(msg, "invalidated") {
					t.Errorf("refusal %q tells the caller %q", msg, leak)
				}
			}
		})
	}
	recs, err := p.Authority().Issuances(ctx, store.IssuanceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		if s := rec.SPIFFEID; s == id("app", "db").String() || s == id("app", "lonely").String() {
			t.Errorf("refused identity %s was issued", s)
		}
	}

	r, err := http.Get("http://" + p.Addr("monitor").String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	body, _ := io.ReadAll(r.Body)
	for _, want := range []string{`result="ok"`, `result="not-on-node"`, `result="untrusted"`, `result="malformed"`} {
		if !strings.Contains(string(body), "meshca_k8s_impersonations_total{"+want+"}") {
			t.Errorf("/metrics has no meshca_k8s_impersonations_total{%s}", want)
		}
	}
}

// TestResponseChainZtunnelOrder: with a plug-in CA two levels below the
// root (cacerts whose ca-cert may sign intermediates), the response has
// every certificate between the leaf and the root in its own element,
// nearest the leaf first, and the root alone last: what ztunnel reads
// (ztunnelChain) and istio-agent concatenates. This is the order of every
// response, impersonated or not: both are ca.Issued.ChainPEM.
func TestResponseChainZtunnelOrder(t *testing.T) {
	c := testca.NewIstioCACerts(t, testca.IstioOptions{CACert: func(tmpl *x509.Certificate) { tmpl.MaxPathLen, tmpl.MaxPathLenZero = 1, false }})
	cacerts := t.TempDir()
	c.Write(t, cacerts)
	parent, err := ca.LoadCACerts(cacerts, time.Now(), ca.CACertsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	web := spiffeid.RequireFromPath(td, "/ns/shop/sa/web")
	p, err := Start(context.Background(), Config{TrustDomain: td, DataDir: t.TempDir(), Parent: parent, GRPCAddr: "127.0.0.1:0",
		Extra: []attestor.Attestor{attestor.NewStaticTokens(map[string]spiffeid.ID{"web-token": web})}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop() })
	chain, err := ztunnelRequest(t, p, "web-token", web, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 4 {
		t.Fatalf("chain of %d elements, want leaf, meshca's intermediate, ca-cert, root", len(chain))
	}
	leaf := ztunnelChain(t, chain)
	if inter, err := pki.ParseCertificate(chain[1]); err != nil || !bytes.Equal(leaf.RawIssuer, inter.RawSubject) {
		t.Error("the element after the leaf is not its issuer")
	}
	if !bytes.Equal([]byte(chain[2]), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.CACert.Raw})) {
		t.Error("the third element is not ca-cert.pem")
	}
	if !bytes.Equal([]byte(chain[3]), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Root.Raw})) {
		t.Error("the last element is not root-cert.pem alone")
	}
}

package podcert

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	certificatesv1beta1 "k8s.io/api/certificates/v1beta1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
)

// Condition reasons: Kubernetes' where it has one, else meshca's.
const (
	// Denied: a key type the CA does not certify (Ed25519, P-521).
	ReasonUnsupportedKeyType = certificatesv1beta1.PodCertificateRequestConditionUnsupportedKeyType
	// Denied: spec.unverifiedUserAnnotations is not empty; meshca
	// recognises no key.
	ReasonInvalidUserAnnotations = certificatesv1beta1.PodCertificateRequestConditionInvalidUserConfig
	// Denied: the key material does not parse.
	ReasonInvalidPublicKey = "InvalidPublicKey"
	// Denied: the allow and deny lists (--allow-namespaces,
	// --deny-namespaces) refuse the pod's ServiceAccount.
	ReasonNotAllowed = "ServiceAccountNotAllowed"
	// Denied: the namespace and ServiceAccount make no valid SPIFFE ID.
	ReasonInvalidIdentity = "InvalidIdentity"
	// Failed: the request carries no key this build reads (a Kubernetes
	// 1.36 kubelet's spec.stubPKCS10Request: meshca built with k8s.io/api
	// 0.35 does not see it).
	ReasonNoPublicKey = "NoPublicKey"
	// Failed: the certificate would live under MinLifetime (--max-ttl
	// under an hour, or the signing intermediate about to expire).
	ReasonLifetime = "LifetimeTooShort"
	// Failed: the CA refused to sign (its log says why).
	ReasonSigningFailed = "SigningFailed"
	// Failed: the certificate signed for the request (which it may not
	// get a second time) was signed longer ago than the API server's
	// 5-minute window for notBefore: the status update kept failing.
	ReasonIssuedTooLongAgo = "IssuedTooLongAgo"
	// Failed: the API server refused the Issued status as invalid.
	ReasonStatusRejected = "StatusRejected"
)

// supportedKeyTypes is what an UnsupportedKeyType denial suggests, in the
// kubelet's names (podCertificate.keyType).
const supportedKeyTypes = "meshca signs ECDSAP256 (recommended), ECDSAP384, RSA3072 and RSA4096 keys: set keyType: ECDSAP256"

// maxMessage bounds a condition's message (the API server allows 32 KiB).
const maxMessage = 1024

// answer is what a request gets: a status with a terminal condition.
type answer struct {
	status                 certificatesv1beta1.PodCertificateRequestStatus
	result, reason         string
	conditionType, message string
}

// handle answers req, or returns an error to retry it.
func (c *Controller) handle(ctx context.Context, req *certificatesv1beta1.PodCertificateRequest) error {
	ans, err := c.decide(ctx, req)
	if err != nil {
		c.cfg.Metrics.Request("retry", "signing")
		return err
	}
	err = c.update(ctx, req, ans)
	var status apierrors.APIStatus
	if ans.conditionType == certificatesv1beta1.PodCertificateRequestConditionTypeIssued && apierrors.IsInvalid(err) && errors.As(err, &status) {
		// The API server's rules refuse this certificate; it may not get
		// another, so the request fails, saying why.
		c.cfg.Logger.Warn("issued status refused by the API server", "namespace", req.Namespace, "name", req.Name, "err", err)
		ans = c.failed(req, ReasonStatusRejected, "the API server refused the certificate: "+status.Status().Message)
		err = c.update(ctx, req, ans)
	}
	switch {
	case err == nil:
	case apierrors.IsNotFound(err): // deleted meanwhile
		return nil
	default:
		c.cfg.Metrics.Request("retry", "status-update")
		if apierrors.IsForbidden(err) {
			err = fmt.Errorf("%w (meshca needs update on podcertificaterequests/status and sign on signer %s)", err, c.cfg.SignerName)
		}
		return err
	}
	c.cfg.Metrics.Request(ans.result, ans.reason)
	log := c.cfg.Logger.With("namespace", req.Namespace, "name", req.Name, "pod", req.Spec.PodName, "uid", req.UID)
	switch ans.result {
	case "issued", "resent":
		c.cfg.Metrics.Issued(c.cfg.Clock.Now().Sub(req.CreationTimestamp.Time))
		log.Debug("pod certificate issued", "resent", ans.result == "resent", "not_after", ans.status.NotAfter)
	default:
		log.Info("pod certificate request "+strings.ToLower(ans.conditionType), "reason", ans.reason, "message", ans.message)
	}
	return nil
}

// update writes ans as req's status.
func (c *Controller) update(ctx context.Context, req *certificatesv1beta1.PodCertificateRequest, ans answer) error {
	next := req.DeepCopy()
	next.Status = ans.status
	_, err := c.cfg.Client.CertificatesV1beta1().PodCertificateRequests(req.Namespace).UpdateStatus(ctx, next, metav1.UpdateOptions{FieldManager: fieldManager})
	return err
}

// decide returns the answer to req, or an error when it may be answered
// later (the CA unavailable).
func (c *Controller) decide(ctx context.Context, req *certificatesv1beta1.PodCertificateRequest) (answer, error) {
	if n := len(req.Spec.UnverifiedUserAnnotations); n > 0 {
		keys := make([]string, 0, n)
		for k := range req.Spec.UnverifiedUserAnnotations {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return c.denied(req, ReasonInvalidUserAnnotations, "meshca recognises no unverifiedUserAnnotations; remove "+strings.Join(keys, ", ")), nil
	}
	// k8s.io/api v0.35 has no spec.stubPKCS10Request; with v0.36 or later
	// pass it as the second argument.
	pub, err := PublicKey(req.Spec.PKIXPublicKey, nil)
	switch {
	case errors.Is(err, ErrUnsupportedKey):
		return c.denied(req, ReasonUnsupportedKeyType, supportedKeyTypes), nil
	case errors.Is(err, ErrNoPublicKey):
		return c.failed(req, ReasonNoPublicKey, "no spec.pkixPublicKey: this meshca cannot read spec.stubPKCS10Request (Kubernetes 1.36 and later); upgrade meshca"), nil
	case err != nil:
		return c.denied(req, ReasonInvalidPublicKey, err.Error()), nil
	}
	id, err := c.cfg.Identities.PodCertificateIdentity(req)
	switch {
	case errors.Is(err, attestor.ErrPermissionDenied):
		return c.denied(req, ReasonNotAllowed, err.Error()), nil
	case err != nil:
		return c.denied(req, ReasonInvalidIdentity, err.Error()), nil
	}
	life := Lifetime(req.Spec.MaxExpirationSeconds, c.cfg.MaxTTL)
	if life < MinLifetime {
		return c.failed(req, ReasonLifetime, fmt.Sprintf("meshca issues certificates for at most %s (--max-ttl), Kubernetes needs at least %s", life, MinLifetime)), nil
	}
	iss, resent, err := c.cfg.Authority.SignOnce(ctx, keyPrefix+string(req.UID), ca.SignRequest{PublicKey: pub, TTL: life, WholeLifetime: true, Identity: id})
	switch {
	case err == nil:
	case errors.Is(err, ca.ErrUnavailable), ctx.Err() != nil:
		return answer{}, err
	case errors.Is(err, ca.ErrInvalidCSR), errors.Is(err, ca.ErrInvalidTTL), errors.Is(err, ca.ErrIdentityMismatch):
		return c.failed(req, ReasonSigningFailed, err.Error()), nil
	default:
		c.cfg.Logger.Error("signing a pod certificate failed", "namespace", req.Namespace, "name", req.Name, "err", err)
		return c.failed(req, ReasonSigningFailed, "meshca could not sign; its log says why"), nil
	}
	return c.issued(req, iss, resent)
}

// issued is the Issued answer with iss, or Failed when iss cannot meet the
// API server's rules.
func (c *Controller) issued(req *certificatesv1beta1.PodCertificateRequest, iss *ca.Issued, resent bool) (answer, error) {
	leaf, err := iss.Certificate()
	if err != nil {
		return answer{}, fmt.Errorf("podcert: the certificate signed for %s/%s does not parse: %w", req.Namespace, req.Name, err)
	}
	nb, na, now := leaf.NotBefore, leaf.NotAfter, c.cfg.Clock.Now()
	if life := na.Sub(nb); life < MinLifetime {
		return c.failed(req, ReasonLifetime, fmt.Sprintf("the certificate would live %s (the signing intermediate expires soon); Kubernetes needs at least %s", life, MinLifetime)), nil
	}
	if now.Sub(nb) > NotBeforeWindow-resendMargin {
		return c.failed(req, ReasonIssuedTooLongAgo, fmt.Sprintf("the certificate signed for this request at %s could not be delivered in time; the kubelet asks again", nb.UTC().Format(time.RFC3339))), nil
	}
	// The chain ends with the trust bundle, which pods get from the
	// ClusterTrustBundle instead: the leaf and its intermediates only.
	chain := iss.ChainPEM[:max(len(iss.ChainPEM)-1, 1)]
	result := "issued"
	if resent {
		result = "resent"
	}
	return answer{
		result:        result,
		conditionType: certificatesv1beta1.PodCertificateRequestConditionTypeIssued,
		status: certificatesv1beta1.PodCertificateRequestStatus{
			Conditions:       []metav1.Condition{c.condition(req, certificatesv1beta1.PodCertificateRequestConditionTypeIssued, "Issued", "issued "+iss.Record.SPIFFEID)},
			CertificateChain: strings.Join(chain, ""),
			NotBefore:        ptr(metav1.NewTime(nb)),
			NotAfter:         ptr(metav1.NewTime(na)),
			BeginRefreshAt:   ptr(metav1.NewTime(RefreshAt(nb, na, req.UID))),
		},
	}, nil
}

func ptr[T any](v T) *T { return &v }

func (c *Controller) denied(req *certificatesv1beta1.PodCertificateRequest, reason, message string) answer {
	return c.terminal(req, certificatesv1beta1.PodCertificateRequestConditionTypeDenied, "denied", reason, message)
}

func (c *Controller) failed(req *certificatesv1beta1.PodCertificateRequest, reason, message string) answer {
	return c.terminal(req, certificatesv1beta1.PodCertificateRequestConditionTypeFailed, "failed", reason, message)
}

func (c *Controller) terminal(req *certificatesv1beta1.PodCertificateRequest, typ, result, reason, message string) answer {
	cond := c.condition(req, typ, reason, message)
	return answer{result: result, reason: reason, conditionType: typ, message: cond.Message,
		status: certificatesv1beta1.PodCertificateRequestStatus{Conditions: []metav1.Condition{cond}}}
}

// condition is a condition of type typ, status True, as of now.
func (c *Controller) condition(req *certificatesv1beta1.PodCertificateRequest, typ, reason, message string) metav1.Condition {
	if len(message) > maxMessage {
		message = strings.ToValidUTF8(message[:maxMessage], "")
	}
	return metav1.Condition{Type: typ, Status: metav1.ConditionTrue, Reason: reason, Message: message,
		ObservedGeneration: req.Generation, LastTransitionTime: metav1.NewTime(c.cfg.Clock.Now())}
}

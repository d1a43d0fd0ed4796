package k8s

import (
	"fmt"

	certificatesv1beta1 "k8s.io/api/certificates/v1beta1"

	"github.com/meshca/meshca/attestor"
)

// KindPodCertificate is recorded for a certificate issued for a Kubernetes
// PodCertificateRequest (KEP-4317): the kubelet of the pod's node asked,
// and the API server had checked that the pod, its ServiceAccount and the
// node are real and belong together, and the proof of possession of the
// key.
const KindPodCertificate = "k8s-pod-certificate"

// Keys of attestor.Identity.Details set for a PodCertificateRequest,
// besides the pod's name and UID, the node and the ServiceAccount's UID.
const (
	DetailRequestName = "request-name"
	DetailRequestUID  = "request-uid"
)

// PodCertificateIdentity returns the identity of the pod a
// PodCertificateRequest is for, spiffe://<td>/ns/<namespace>/sa/<service
// account>, with the allow and deny lists of first issuance applied (a
// refusal wraps attestor.ErrPermissionDenied). The request is the
// credential, and the API server vouches for it; nothing is looked up.
// Subject is the node's user, system:node:<node>, who created the request.
func (a *Admission) PodCertificateIdentity(req *certificatesv1beta1.PodCertificateRequest) (attestor.Identity, error) {
	s := req.Spec
	id, err := a.cfg.identity(KindPodCertificate, req.Namespace, s.ServiceAccountName, map[string]string{
		DetailPodName:           s.PodName,
		DetailPodUID:            string(s.PodUID),
		DetailServiceAccountUID: string(s.ServiceAccountUID),
		DetailNode:              string(s.NodeName),
		DetailRequestName:       req.Name,
		DetailRequestUID:        string(req.UID),
	})
	if err != nil {
		return attestor.Identity{}, fmt.Errorf("k8s: pod certificate for %s/%s: %w", req.Namespace, s.PodName, err)
	}
	id.Subject = "system:node:" + string(s.NodeName)
	return id, nil
}

// Package podcert makes meshca a Kubernetes pod certificate signer
// (KEP-4317, certificates.k8s.io/v1beta1 PodCertificateRequests, beta in
// Kubernetes 1.35): the kubelet generates a key for a pod, asks for a
// certificate with a PodCertificateRequest naming a signer, and mounts the
// chain and key into the pod through a podCertificate projected volume. A
// Controller answers the requests that name its signer with an X509-SVID,
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>, signed by the
// CA's usual pipeline, and sets the request's status once.
//
// A shared informer watches only the requests of its signer (field
// selector spec.signerName=<name>) and queues their keys in a rate-limited
// work queue (each key once however often it is queued, so the queue is no
// longer than the requests the API server holds); a few workers take them.
// For each request that has no terminal condition (Issued, Denied,
// Failed) a worker:
//
//  1. denies it, with Kubernetes' reasons where they exist, when it carries
//     unverifiedUserAnnotations (meshca recognises none:
//     InvalidUnverifiedUserAnnotations), a key type the CA does not certify
//     (UnsupportedKeyType: Ed25519 and P-521; the message suggests
//     ECDSAP256), a malformed key (InvalidPublicKey), or a ServiceAccount
//     that the allow and deny lists refuse (ServiceAccountNotAllowed);
//  2. asks the Authority for a certificate once per request: the request's
//     UID is the key of ca.Authority.SignOnce, so a request asked again
//     after a crash between signing and the status update, or by another
//     replica sharing the store, gets the certificate recorded the first
//     time, never a second one;
//  3. sets the status: the Issued condition with certificateChain (the
//     leaf, then its intermediates; not the root, which pods get from the
//     ClusterTrustBundle), notBefore, notAfter and beginRefreshAt, in one
//     update; or Failed when the certificate cannot meet the API server's
//     rules (see Lifetime, and a certificate re-sent after its notBefore
//     left the API server's 5-minute window).
//
// A failure that may pass (the store or the API server unreachable, a
// conflicting update) is retried with exponential backoff, 250 ms doubling
// to 30 s. Run may be started and stopped by a leader elector.
//
// The apiserver has checked, before the request exists, the proof of
// possession of the key and that the pod, its ServiceAccount and the node
// are real and belong together (the Node authorizer and NodeRestriction);
// the identity is the request's namespace and ServiceAccount, nothing is
// looked up.
package podcert

// Package ca is meshca's certificate authority: the Authority that turns an
// attested identity and a CSR into an X509-SVID.
//
// The files follow its jobs: authority.go (Config, New, the trust bundle),
// root.go (the self-signed root kept in the store), parent.go (what signs
// intermediates: that root or Istio cacerts files), rotate.go (the
// short-lived signing intermediate, prepared at 40 % and activated at 50 %
// of its life, and the one update that loads, advances and saves the CA
// state), rootrotation.go (replacing the root without downtime: prepared,
// switched, completed), emergency.go (RotateIntermediateNow, revoking the
// intermediate for renewal), status.go (what `meshca ca status` shows),
// sign.go (the request path: TTL, CSR checks, template, signature, the
// independent validator in validate.go, the durable record), revocation.go
// and jointokens.go (the deny-list rule and the admin operations),
// maintain.go (the rotation and pruning loop), keys.go and seal.go (key
// generation and sealing at rest with the KEK), ready.go (readiness).
//
// The CA's state sits behind ca/store.Store; nothing here opens files but
// the cacerts directory.
package ca

package policy

// The named string types below are what the package decides and reports.
// Each encodes (JSON, YAML) as the plain string Istio and Envoy use, so the
// output of `meshca audit` reads the same as Istio's own vocabulary.

// Verdict is the outcome of Authorize, and what a CUSTOM provider answers.
type Verdict string

// Verdicts.
const (
	Allow Verdict = "ALLOW"
	Deny  Verdict = "DENY"
)

// Action is an AuthorizationPolicy action, spelled as in spec.action.
type Action string

// Actions.
const (
	ActionAllow  Action = "ALLOW"
	ActionDeny   Action = "DENY"
	ActionAudit  Action = "AUDIT"
	ActionCustom Action = "CUSTOM"
)

// Severity is how serious a lint Finding is.
type Severity string

// SeverityWarning is the severity of every Finding Lint reports.
const SeverityWarning Severity = "warning"

// MTLSMode is a PeerAuthentication mTLS mode, spelled as in spec.mtls.mode.
type MTLSMode string

// mTLS modes. MTLSUnset appears only in policies (it inherits); MTLSMode
// never returns it.
const (
	MTLSStrict     MTLSMode = "STRICT"
	MTLSPermissive MTLSMode = "PERMISSIVE"
	MTLSDisable    MTLSMode = "DISABLE"
	MTLSUnset      MTLSMode = "UNSET"
)

package audit

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/meshca/meshca/policy"
)

// WriteTable writes the report as `meshca audit cert` prints it.
func (r CertReport) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "SOURCE\t%s\n", r.Source)
	fmt.Fprintf(w, "SPIFFE ID\t%s\n", r.SPIFFEID)
	fmt.Fprintf(w, "URI SANS\t%s\n", strings.Join(r.URISANs, ", "))
	fmt.Fprintf(w, "SERIAL\t%s\n", r.Serial)
	fmt.Fprintf(w, "ISSUER\t%s\n", r.Issuer)
	fmt.Fprintf(w, "VALID\t%s to %s\n", r.NotBefore.Format(time.RFC3339), r.NotAfter.Format(time.RFC3339))
	fmt.Fprintf(w, "TIME LEFT\t%s\n", r.TimeLeft)
	fmt.Fprintf(w, "KEY\t%s\n", r.KeyType)
	fmt.Fprintf(w, "CHAIN\t%d certificate(s)\n", r.ChainLen)
	if r.Verified != nil {
		v := "verified against the bundle"
		if !*r.Verified {
			v = "NOT verified: " + r.VerifyError
		}
		fmt.Fprintf(w, "TRUST\t%s\n", v)
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "WARNING\t%s\n", warn)
	}
}

// WriteTable writes the report as `meshca audit issued` prints it.
func (r IssuedReport) WriteTable(w io.Writer) {
	fmt.Fprintln(w, "SPIFFE ID\tISSUED\tLIVE\tREVOKED\tLAST ISSUED\tCREDENTIALS")
	for _, i := range r.Identities {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%s\t%s\n", i.SPIFFEID, i.Issued, i.Live, i.Revoked, i.LastIssued.UTC().Format(time.RFC3339), strings.Join(i.Credentials, ","))
	}
	for _, rv := range r.Revoked {
		fmt.Fprintf(w, "REVOKED\t%s\t%s\n", rv.Serial, rv.SPIFFEID)
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "WARNING\t%s\n", warn)
	}
}

// DecisionTable writes an authorization decision as `meshca audit authz`
// prints it.
func DecisionTable(w io.Writer, d policy.Decision) {
	fmt.Fprintf(w, "DECISION\t%s\n", d.Decision)
	if d.Action != "" {
		fmt.Fprintf(w, "ACTION\t%s\n", d.Action)
	}
	if d.Policy != "" {
		fmt.Fprintf(w, "POLICY\t%s\n", d.Policy)
	}
	if d.Rule >= 0 {
		fmt.Fprintf(w, "RULE\t%d\n", d.Rule)
	}
	fmt.Fprintf(w, "REASON\t%s\n", d.Reason)
}

// MTLS is the output of `meshca audit mtls`.
type MTLS struct {
	Mode   policy.MTLSMode `json:"mode"`
	Policy string          `json:"policy"`
}

// WriteTable writes the mode and the policy that set it.
func (m MTLS) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "MODE\t%s\n", m.Mode)
	p := m.Policy
	if p == "" {
		p = "(none: the default)"
	}
	fmt.Fprintf(w, "POLICY\t%s\n", p)
}

// FindingsTable writes lint findings as `meshca audit lint` prints them.
func FindingsTable(w io.Writer, findings []policy.Finding) {
	if len(findings) == 0 {
		fmt.Fprintln(w, "no findings")
		return
	}
	fmt.Fprintln(w, "SEVERITY\tPOLICY\tRULE\tMESSAGE")
	for _, fd := range findings {
		rule := "-"
		if fd.Rule >= 0 {
			rule = fmt.Sprint(fd.Rule)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", fd.Severity, fd.Policy, rule, fd.Message)
	}
}

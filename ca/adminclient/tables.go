package adminclient

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/server"
)

// Answer is an admin API answer that also prints as a table.
type Answer interface{ WriteTable(w io.Writer) }

// Status is the CA's state (GET /v1/admin/ca); as JSON it is ca.Status.
type Status struct{ *ca.Status }

// RootRotation answers a root rotation request.
type RootRotation struct {
	*server.RootRotationResponse
}

// IntermediateRotation answers an emergency intermediate rotation.
type IntermediateRotation struct {
	*server.IntermediateRotationResponse
}

// WriteTable writes the status as `meshca ca status` prints it.
func (s Status) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "TRUST DOMAIN\t%s\n", s.TrustDomain)
	fmt.Fprintf(w, "MODE\t%s\n", s.Mode)
	fmt.Fprintf(w, "NOW\t%s\n\n", stamp(s.Now))
	fmt.Fprintln(w, "CERTIFICATE\tSTATE\tSUBJECT\tSHA-256\tNOT BEFORE\tNOT AFTER")
	row := func(kind string, c ca.CertStatus) {
		state := c.State
		if !c.RevokedAt.IsZero() {
			state += " at " + stamp(c.RevokedAt)
			if c.Reason != "" {
				state += " (" + c.Reason + ")"
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", kind, state, c.Subject, c.FingerprintSHA256, stamp(c.NotBefore), stamp(c.NotAfter))
	}
	for _, r := range s.Roots {
		row("root", r)
	}
	if s.Parent != nil {
		row("parent", *s.Parent)
	}
	for _, i := range s.Intermediates {
		row("intermediate", i)
	}
	fmt.Fprintln(w)
	if !s.NextIntermediateRotation.IsZero() {
		fmt.Fprintf(w, "NEXT INTERMEDIATE ROTATION\t%s\n", stamp(s.NextIntermediateRotation))
	}
	if rr := s.RootRotation; rr != nil {
		fmt.Fprintf(w, "ROOT ROTATION\t%s\n", rr.Phase)
		for _, step := range []struct {
			name string
			at   time.Time
		}{{"PREPARED AT", rr.PreparedAt}, {"SWITCH AFTER", rr.SwitchAfter}, {"SWITCHED AT", rr.SwitchedAt}, {"RETIRE AFTER", rr.RetireAfter}, {"COMPLETED AT", rr.CompletedAt}} {
			fmt.Fprintf(w, "  %s\t%s\n", step.name, stamp(step.at))
		}
		if rr.NextStep != "" {
			fmt.Fprintf(w, "  NEXT STEP\t%s at %s\n", rr.NextStep, stamp(rr.NextStepAt))
		}
	} else {
		fmt.Fprintln(w, "ROOT ROTATION\tnone")
	}
	writeFederation(w, s.Federation)
	if s.LastError != "" {
		fmt.Fprintf(w, "LAST ERROR\t%s\n", s.LastError)
	}
}

// writeFederation writes the federated trust domains, one line each, then
// their roots by serial.
func writeFederation(w io.Writer, fed []ca.FederatedStatus) {
	if len(fed) == 0 {
		return
	}
	fmt.Fprintln(w, "\nFEDERATED TRUST DOMAIN\tSOURCE\tREFRESHED\tCHANGED\tSEQUENCE\tX.509 AUTHORITIES (SERIAL)\tJWT KEYS")
	for _, f := range fed {
		serials := make([]string, len(f.X509Authorities))
		for i, c := range f.X509Authorities {
			serials[i] = c.Serial
		}
		if f.Error != "" {
			serials = []string{"unreadable: " + f.Error}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%d\n", f.TrustDomain, f.Source, stamp(f.RefreshedAt), stamp(f.ChangedAt), f.Sequence,
			strings.Join(serials, ","), len(f.JWTKeyIDs))
	}
}

// WriteTable writes what was done, then the status after.
func (r RootRotation) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "%s\n\n", r.Message)
	Status{r.Status}.WriteTable(w)
}

// WriteTable writes the revoked and the new intermediate.
func (r IntermediateRotation) WriteTable(w io.Writer) {
	fmt.Fprintln(w, "INTERMEDIATE\tSERIAL\tSHA-256\tNOT AFTER")
	for _, c := range []ca.CertStatus{r.Revoked, r.Active} {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", c.State, c.Serial, c.FingerprintSHA256, stamp(c.NotAfter))
	}
}

// stamp formats t for a table; "-" for the zero time.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// maxRequestJSON bounds a request read by DecodeRequest.
const maxRequestJSON = 1 << 20

// DecodeRequest reads one Request as JSON (at most 1 MiB); unknown fields
// are errors, so a misspelled attribute is never silently ignored. The
// result is not validated: call Validate.
func DecodeRequest(r io.Reader) (Request, error) {
	var req Request
	dec := json.NewDecoder(io.LimitReader(r, maxRequestJSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return Request{}, fmt.Errorf("policy: %w", err)
	}
	return req, nil
}

// Validate refuses a request that Authorize could not judge as Envoy would
// see it: an unknown protocol, no workload namespace, an IP that does not
// parse, a CUSTOM verdict other than ALLOW or DENY.
func (r Request) Validate() error {
	if p := strings.ToUpper(r.Protocol); p != "" && p != "HTTP" && p != "TCP" {
		return fmt.Errorf("policy: protocol must be HTTP or TCP, not %q", r.Protocol)
	}
	if r.Workload.Namespace == "" {
		return errors.New("policy: the request names no workload namespace")
	}
	for _, a := range []struct{ name, ip string }{
		{"source.ip", r.Source.IP}, {"source.remote_ip", r.Source.RemoteIP}, {"destination.ip", r.Destination.IP},
	} {
		if _, err := netip.ParseAddr(a.ip); a.ip != "" && err != nil {
			return fmt.Errorf("policy: %s %q is not an IP address", a.name, a.ip)
		}
	}
	for provider, v := range r.CustomVerdicts {
		if v != Allow && v != Deny {
			return fmt.Errorf("policy: custom_verdicts[%s] must be ALLOW or DENY, not %q", provider, v)
		}
	}
	return nil
}

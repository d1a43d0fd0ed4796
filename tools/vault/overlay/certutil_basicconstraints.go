// Supplied by meshca's tools/vault: Vault v1.14.0 calls this function, but
// the SDK version it pins does not have it. Written for meshca (see
// tools/vault/README.md); added to the SDK package with go build -overlay.

package certutil

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
)

// ParseBasicConstraintExtension parses a basic constraints extension
// (RFC 5280 4.2.1.9) and returns whether it marks a CA and its path length
// constraint (-1 when absent).
func ParseBasicConstraintExtension(ext pkix.Extension) (bool, int, error) {
	if !ext.Id.Equal(ExtensionBasicConstraintsOID) {
		return false, -1, fmt.Errorf("extension %v is not basic constraints", ext.Id)
	}
	var bc struct {
		IsCA       bool `asn1:"optional"`
		MaxPathLen int  `asn1:"optional,default:-1"`
	}
	rest, err := asn1.Unmarshal(ext.Value, &bc)
	if err != nil {
		return false, -1, fmt.Errorf("parsing basic constraints: %w", err)
	}
	if len(rest) != 0 {
		return false, -1, errors.New("trailing data after basic constraints")
	}
	return bc.IsCA, bc.MaxPathLen, nil
}

package pki_test

import (
	"fmt"

	"github.com/meshca/meshca/internal/pki"
)

func ExampleParseKeyType() {
	for _, s := range []string{"", "RSA-3072", "dsa"} {
		t, err := pki.ParseKeyType(s)
		fmt.Printf("%q: %q %v\n", s, t, err)
	}
	// Output:
	// "": "ecdsa-p256" <nil>
	// "RSA-3072": "rsa-3072" <nil>
	// "dsa": "" unknown key type "dsa" (want one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096)
}

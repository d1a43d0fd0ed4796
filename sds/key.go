package sds

import "github.com/meshca/meshca/internal/pki"

// Key types for Config.KeyType. They are the names the CA uses for its own
// keys (ca.KeyType); both take them from internal/pki, so that the agent
// depends on the CA only through the CSR API client.
const (
	// KeyECDSAP256 is the default: what Envoy, Istio and SPIRE default to,
	// and an order of magnitude cheaper per handshake than RSA 2048.
	KeyECDSAP256 = string(pki.KeyECDSAP256)
	KeyECDSAP384 = string(pki.KeyECDSAP384)
	// RSA keys are for peers that cannot do ECDSA.
	KeyRSA2048 = string(pki.KeyRSA2048)
	KeyRSA3072 = string(pki.KeyRSA3072)
	KeyRSA4096 = string(pki.KeyRSA4096)
)

// Package pki is the key and certificate handling that the CA (package ca)
// and the agent (package sds) share: the names of the key types meshca
// generates, key generation, and decoding PEM certificates. It exists so
// that the two, which must not import each other, agree on these without
// keeping copies.
//
// Key types are named as on the command line, default first:
//
//	t, err := pki.ParseKeyType("RSA-3072") // pki.KeyRSA3072; "" is pki.KeyECDSAP256
//	key, err := pki.GenerateKey(t)
//
// Certificates come as PEM, either a file or answer holding several
// (ParseCertificates: a chain or a bundle) or one element of the CA's
// answer, which holds exactly one (ParseCertificate):
//
//	chain, err := pki.ParseCertificates(pemBytes)
//	leaf, err := pki.ParseCertificate(chainPEM[0])
//
// Errors carry no package prefix, unlike the rest of meshca: every caller
// wraps them with its own prefix and what it was reading ("ca: <path>:
// ...", "sds: CA returned a bad chain: element 0: ..."), and the messages
// users see stay the ones ca and sds have always printed.
package pki

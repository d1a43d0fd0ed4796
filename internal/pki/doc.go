// Package pki is the key handling that the CA (package ca) and the agent
// (package sds) share: the names of the key types meshca generates and key
// generation. It exists so that the two, which must not import each other,
// agree on these without keeping copies.
//
// Key types are named as on the command line, default first:
//
//	t, err := pki.ParseKeyType("RSA-3072") // pki.KeyRSA3072; "" is pki.KeyECDSAP256
//	key, err := pki.GenerateKey(t)
//
// Errors carry no package prefix, unlike the rest of meshca: every caller
// wraps them with its own ("ca: ...", "sds: ..."), so the messages users see
// keep the prefix they have always had.
package pki

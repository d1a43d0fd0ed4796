package pki

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ParseCertificates decodes the PEM "CERTIFICATE" blocks in b, in order: a
// chain or a bundle as files and Envoy secrets hold them. Blocks of other
// types (a private key kept in the same file) are skipped, and decoding
// stops at the first data that is not PEM. It fails when no certificate is
// found or one does not parse.
func ParseCertificates(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificates")
	}
	return certs, nil
}

// ParseCertificate decodes s, which must be exactly one PEM "CERTIFICATE"
// block and nothing else but white space: one element of the chain the
// CA's signing APIs answer with.
func ParseCertificate(s string) (*x509.Certificate, error) {
	block, rest := pem.Decode([]byte(s))
	switch {
	case block == nil:
		return nil, errors.New("not PEM")
	case block.Type != "CERTIFICATE":
		return nil, fmt.Errorf("PEM block is %q, want \"CERTIFICATE\"", block.Type)
	case strings.TrimSpace(string(rest)) != "":
		return nil, errors.New("trailing data after the certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// ReadCertificates reads a PEM file with ParseCertificates; its errors name
// the file.
func ReadCertificates(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err // *fs.PathError names the file
	}
	certs, err := ParseCertificates(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// Package archtest holds the test that enforces the direction of imports
// between meshca's packages (see docs/ARCHITECTURE.md). It has no code.
package archtest

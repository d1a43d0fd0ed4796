package vault

import "github.com/spf13/pflag"

// AddFlags registers the --vault-* flags of `meshca server` on fs, with
// the documented defaults.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Addr, "vault-addr", "", "Vault address (https://vault:8200): the root lives in Vault, its key in Transit (--vault-transit-key) or as Vault's PKI engine (--vault-pki-path); empty: no Vault")
	fs.BoolVar(&c.AllowInsecureHTTP, "vault-allow-insecure-http", false, "allow an http:// --vault-addr (tokens and CSRs in clear; a local test server only)")
	fs.StringVar(&c.CAFile, "vault-ca-file", "", "PEM CA certificates that verify Vault's TLS certificate; empty: the system's roots")
	fs.StringVar(&c.Namespace, "vault-namespace", "", "Vault Enterprise namespace")
	fs.StringVar(&c.Auth, "vault-auth", AuthToken, "how meshca logs in to Vault: token, approle or kubernetes")
	fs.StringVar(&c.TokenFile, "vault-token-file", "", "file holding the Vault token (token auth); empty: $VAULT_TOKEN")
	fs.StringVar(&c.RoleIDFile, "vault-approle-role-id-file", "", "file holding the AppRole role ID (approle auth)")
	fs.StringVar(&c.SecretIDFile, "vault-approle-secret-id-file", "", "file holding the AppRole secret ID (approle auth)")
	fs.StringVar(&c.AppRoleMount, "vault-approle-mount", DefaultAppRoleMount, "where AppRole auth is enabled in Vault")
	fs.StringVar(&c.KubernetesRole, "vault-kubernetes-role", "", "Vault role to log in as with the server's ServiceAccount token (kubernetes auth)")
	fs.StringVar(&c.KubernetesMount, "vault-kubernetes-mount", DefaultKubernetesMount, "where Kubernetes auth is enabled in Vault")
	fs.StringVar(&c.KubernetesTokenFile, "vault-kubernetes-token-file", DefaultKubernetesTokenFile, "the server's own ServiceAccount token (kubernetes auth; a projected token with Vault's audience is better), read at each login")
	fs.StringVar(&c.TransitKey, "vault-transit-key", "", "Transit key holding the root's private key (created non-exportable when missing); meshca makes and keeps the self-signed root certificate")
	fs.StringVar(&c.TransitMount, "vault-transit-mount", DefaultTransitMount, "where the Transit engine is mounted")
	fs.StringVar(&c.TransitKeyType, "vault-transit-key-type", DefaultTransitKeyType, "type of a Transit key meshca creates: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096")
	fs.StringVar(&c.PKIPath, "vault-pki-path", DefaultPKIPath, "without --vault-transit-key: the PKI endpoint that signs meshca's intermediate (<mount>/root/sign-intermediate or <mount>/issuer/<ref>/sign-intermediate)")
	fs.StringVar(&c.PKINextPath, "vault-pki-next-path", "", "a second PKI sign-intermediate endpoint, under a new root, staged for meshca ca rotate-root")
	fs.DurationVar(&c.Timeout, "vault-timeout", DefaultTimeout, "bound on each call to Vault")
}

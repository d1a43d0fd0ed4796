{{/* Name of every object of the release. */}}
{{- define "meshca.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshca.selectorLabels" -}}
app.kubernetes.io/name: meshca
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "meshca.labels" -}}
{{ include "meshca.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: meshca
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "meshca.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* The signer of the signer-linked ClusterTrustBundle, "" for none: --pod-certificate-signer's by default. */}}
{{- define "meshca.ctbSigner" -}}
{{- if .Values.bundle.clusterTrustBundleSigner -}}
{{ .Values.bundle.clusterTrustBundleSigner }}
{{- else if .Values.podCertificates.enabled -}}
{{ .Values.podCertificates.signerName }}
{{- end -}}
{{- end -}}

{{/* The ClusterTrustBundle's name: <domain>:<path>:<trust domain> (ca/bundle/clustertrustbundle.Name). */}}
{{- define "meshca.ctbName" -}}
{{ include "meshca.ctbSigner" . | replace "/" ":" }}:{{ .Values.trustDomain }}
{{- end -}}

{{/* Whether the attestation mode fetches the cluster's JWKS through the API server. */}}
{{- define "meshca.jwksThroughAPI" -}}
{{- if and (has .Values.kubernetes.attestation (list "informer" "jwks")) (not .Values.kubernetes.jwksURL) -}}
true
{{- end -}}
{{- end -}}

{{/* Whether meshca talks to the Kubernetes API at all (and so needs its token mounted). */}}
{{- define "meshca.usesKubeAPI" -}}
{{- if or (ne .Values.kubernetes.attestation "off") .Values.bundle.configMap (include "meshca.ctbSigner" .) .Values.leaderElection.enabled .Values.podCertificates.enabled -}}
true
{{- end -}}
{{- end -}}

{{/* Refuses values meshca would refuse at start, or that cannot work. */}}
{{- define "meshca.validate" -}}
{{- $v := .Values -}}
{{- if not (has $v.store.type (list "bolt" "postgres")) -}}
{{- fail (printf "store.type must be bolt or postgres, not %q" $v.store.type) -}}
{{- end -}}
{{- if and (eq $v.store.type "bolt") (gt (int $v.replicas) 1) -}}
{{- fail "replicas > 1 needs store.type=postgres: one process holds the bbolt file" -}}
{{- end -}}
{{- if eq $v.store.type "postgres" -}}
{{- if not $v.store.postgres.dsnSecret.name -}}
{{- fail "store.type=postgres needs store.postgres.dsnSecret.name (the DSN, password included)" -}}
{{- end -}}
{{- if not (or $v.cacerts.secretName $v.vault.addr) -}}
{{- fail "store.type=postgres needs a root no replica keeps a key of: cacerts.secretName or vault.addr" -}}
{{- end -}}
{{- if not $v.adminToken.secretName -}}
{{- fail "store.type=postgres needs adminToken.secretName: the replicas must share one admin token" -}}
{{- end -}}
{{- end -}}
{{- if and $v.cacerts.secretName $v.vault.addr -}}
{{- fail "cacerts.secretName and vault.addr: choose one root" -}}
{{- end -}}
{{- if and $v.vault.addr (not (has $v.vault.auth (list "kubernetes" "approle" "token"))) -}}
{{- fail (printf "vault.auth must be kubernetes, approle or token, not %q" $v.vault.auth) -}}
{{- end -}}
{{- if and $v.vault.addr (eq $v.vault.auth "approle") (not $v.vault.approle.secretName) -}}
{{- fail "vault.auth=approle needs vault.approle.secretName (the Secret with the role ID and secret ID)" -}}
{{- end -}}
{{- if and $v.vault.addr (eq $v.vault.auth "token") (not $v.vault.token.secretName) -}}
{{- fail "vault.auth=token needs vault.token.secretName (the Secret with the Vault token)" -}}
{{- end -}}
{{- if not (has $v.kubernetes.attestation (list "off" "informer" "tokenreview" "jwks")) -}}
{{- fail (printf "kubernetes.attestation must be off, informer, tokenreview or jwks, not %q" $v.kubernetes.attestation) -}}
{{- end -}}
{{- if and $v.kubernetes.trustedNodeAccounts (ne $v.kubernetes.attestation "informer") -}}
{{- fail "kubernetes.trustedNodeAccounts needs kubernetes.attestation=informer" -}}
{{- end -}}
{{- if and $v.bundle.takeOverIstio (ne $v.bundle.configMap "istio-ca-root-cert") -}}
{{- fail "bundle.takeOverIstio needs bundle.configMap=istio-ca-root-cert" -}}
{{- end -}}
{{- end -}}

{{/* Mount paths. */}}
{{- define "meshca.dataDir" -}}/var/lib/meshca{{- end -}}

{{/* The container's arguments: `meshca server` and its flags. */}}
{{- define "meshca.args" -}}
{{- $v := .Values -}}
{{- $ns := .Release.Namespace -}}
{{- $svc := include "meshca.fullname" . -}}
- server
- --trust-domain={{ $v.trustDomain }}
- --data-dir={{ include "meshca.dataDir" . }}
{{- if eq $v.store.type "postgres" }}
- --store-dsn-file=/etc/meshca/store/{{ $v.store.postgres.dsnSecret.key }}
{{- end }}
{{- if $v.kek.secretName }}
- --kek-file=/etc/meshca/kek/{{ $v.kek.key }}
{{- end }}
{{- if $v.adminToken.secretName }}
- --admin-token-file=/etc/meshca/admin/{{ $v.adminToken.key }}
{{- end }}
{{- if ne $v.keyType "ecdsa-p256" }}
- --key-type={{ $v.keyType }}
{{- end }}
{{- with $v.ttl.default }}
- --default-ttl={{ . }}
{{- end }}
{{- with $v.ttl.max }}
- --max-ttl={{ . }}
{{- end }}
{{- with $v.ttl.intermediate }}
- --intermediate-ttl={{ . }}
{{- end }}
{{- with $v.ttl.root }}
- --root-ttl={{ . }}
{{- end }}
{{- with $v.ttl.retention }}
- --retention={{ . }}
{{- end }}
{{- with $v.ttl.jwtSVID }}
- --jwt-svid-ttl={{ . }}
{{- end }}
{{- if $v.cacerts.secretName }}
- --cacerts-dir=/etc/cacerts
{{- if $v.cacerts.signDirectly }}
- --cacerts-sign-directly
{{- end }}
{{- if $v.cacerts.nextSecretName }}
- --cacerts-next-dir=/etc/cacerts-next
{{- end }}
{{- end }}
{{- if $v.vault.addr }}
- --vault-addr={{ $v.vault.addr }}
{{- if $v.vault.caConfigMap.name }}
- --vault-ca-file=/etc/meshca/vault-ca/{{ $v.vault.caConfigMap.key }}
{{- end }}
{{- with $v.vault.namespace }}
- --vault-namespace={{ . }}
{{- end }}
- --vault-auth={{ $v.vault.auth }}
{{- if eq $v.vault.auth "kubernetes" }}
- --vault-kubernetes-role={{ $v.vault.kubernetes.role }}
{{- with $v.vault.kubernetes.mount }}
- --vault-kubernetes-mount={{ . }}
{{- end }}
- --vault-kubernetes-token-file=/var/run/secrets/tokens/vault-token
{{- else if eq $v.vault.auth "approle" }}
- --vault-approle-role-id-file=/etc/meshca/vault-approle/{{ $v.vault.approle.roleIDKey }}
- --vault-approle-secret-id-file=/etc/meshca/vault-approle/{{ $v.vault.approle.secretIDKey }}
{{- with $v.vault.approle.mount }}
- --vault-approle-mount={{ . }}
{{- end }}
{{- else }}
- --vault-token-file=/etc/meshca/vault-token/{{ $v.vault.token.key }}
{{- end }}
{{- if $v.vault.transit.key }}
- --vault-transit-key={{ $v.vault.transit.key }}
{{- with $v.vault.transit.mount }}
- --vault-transit-mount={{ . }}
{{- end }}
{{- with $v.vault.transit.keyType }}
- --vault-transit-key-type={{ . }}
{{- end }}
{{- else }}
{{- with $v.vault.pki.path }}
- --vault-pki-path={{ . }}
{{- end }}
{{- with $v.vault.pki.nextPath }}
- --vault-pki-next-path={{ . }}
{{- end }}
{{- end }}
{{- with $v.vault.timeout }}
- --vault-timeout={{ . }}
{{- end }}
{{- end }}
- --grpc-listen=:{{ $v.ports.grpc }}
- --https-listen=:{{ $v.ports.https }}
- --monitoring-listen=:{{ $v.ports.monitoring }}
- --dns-names={{ join "," (concat (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns $v.clusterDomain)) $v.extraDNSNames) }}
- --k8s-attestation={{ $v.kubernetes.attestation }}
{{- if ne $v.kubernetes.attestation "off" }}
- --token-audiences={{ join "," $v.kubernetes.tokenAudiences }}
{{- with $v.kubernetes.issuer }}
- --k8s-issuer={{ . }}
{{- end }}
{{- with $v.kubernetes.jwksURL }}
- --k8s-jwks-url={{ . }}
{{- end }}
{{- end }}
{{- with $v.kubernetes.allowNamespaces }}
- --allow-namespaces={{ join "," . }}
{{- end }}
- --deny-namespaces={{ join "," $v.kubernetes.denyNamespaces }}
{{- with $v.kubernetes.trustedNodeAccounts }}
- --trusted-node-accounts={{ join "," . }}
{{- end }}
{{- with $v.kubernetes.qps }}
- --k8s-qps={{ . }}
{{- end }}
{{- with $v.kubernetes.burst }}
- --k8s-burst={{ . }}
{{- end }}
{{- if $v.leaderElection.enabled }}
- --leader-elect
- --leader-elect-namespace={{ $ns }}
- --leader-elect-name={{ $v.leaderElection.leaseName }}
{{- end }}
- --bundle-configmap={{ $v.bundle.configMap }}
{{- with $v.bundle.configMapNamespaces }}
- --bundle-configmap-namespaces={{ join "," . }}
{{- end }}
{{- if $v.bundle.takeOverIstio }}
- --bundle-configmap-take-over-istio
{{- end }}
{{- with include "meshca.ctbSigner" . }}
- --cluster-trust-bundle-signer={{ . }}
{{- end }}
{{- if $v.bundle.endpoint.enabled }}
- --bundle-endpoint-listen=:{{ $v.bundle.endpoint.port }}
{{- end }}
{{- if $v.federation.configMap }}
- --federation-config=/etc/meshca/federation/{{ $v.federation.key }}
{{- end }}
{{- if $v.podCertificates.enabled }}
- --pod-certificate-signer={{ $v.podCertificates.signerName }}
{{- end }}
- --log-format={{ $v.log.format }}
- --log-level={{ $v.log.level }}
{{- with $v.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end -}}

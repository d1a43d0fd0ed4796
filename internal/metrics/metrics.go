// Package metrics implements meshca's metrics interfaces with Prometheus
// collectors registered on a registry the caller owns (never the global one).
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// CA implements ca.Metrics.
type CA struct {
	issued   *prometheus.CounterVec
	duration *prometheus.HistogramVec
	expiry   prometheus.Gauge
	failing  prometheus.Gauge
	failures prometheus.Counter
	jwt      *prometheus.CounterVec
}

// NewCA registers the CA's collectors on reg.
func NewCA(reg prometheus.Registerer) *CA {
	m := &CA{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_issuance_total",
			Help: "Certificate signing requests handled, by credential kind and result.",
		}, []string{"kind", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshca_issuance_duration_seconds",
			Help:    "Time to check, sign, validate and durably record one certificate.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"kind"}),
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshca_signing_ca_expiry_timestamp_seconds",
			Help: "When the active signing CA stops covering leaves, as a Unix time: the intermediate's NotAfter, or in direct mode (Istio cacerts with pathlen 0) the earliest NotAfter of ca-cert.pem's chain.",
		}),
	}
	m.failing = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meshca_ca_rotation_failing",
		Help: "1 while the CA's last rotation attempt failed (the next intermediate cannot be prepared: its parent, e.g. Vault, is unreachable); it is retried with backoff. Alert when it stays 1: leaves are signed until meshca_signing_ca_expiry_timestamp_seconds.",
	})
	m.failures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshca_ca_rotation_failures_total",
		Help: "Rotation attempts of the CA that failed and were retried.",
	})
	m.jwt = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshca_jwt_svid_total",
		Help: "JWT-SVID requests handled, by credential kind and result (JWT-SVIDs are not recorded in the issuance log).",
	}, []string{"kind", "result"})
	reg.MustRegister(m.issued, m.duration, m.expiry, m.failing, m.failures, m.jwt)
	return m
}

// RotationFailing implements ca.Metrics.
func (m *CA) RotationFailing(failing bool) {
	if failing {
		m.failing.Set(1)
		m.failures.Inc()
		return
	}
	m.failing.Set(0)
}

// Vault implements vault.Metrics.
type Vault struct {
	requests *prometheus.CounterVec
	expiry   prometheus.Gauge
}

// NewVault registers the Vault client's collectors on reg.
func NewVault(reg prometheus.Registerer) *Vault {
	m := &Vault{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_vault_requests_total",
			Help: "Calls to Vault by operation (login, renew, transit-sign, pki-sign-intermediate, ...) and result.",
		}, []string{"operation", "result"}),
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshca_vault_token_expiry_timestamp_seconds",
			Help: "When meshca's Vault token expires, as a Unix time (0: never); it is renewed or replaced at two thirds of its life.",
		}),
	}
	reg.MustRegister(m.requests, m.expiry)
	return m
}

// Request implements vault.Metrics.
func (m *Vault) Request(op, result string) { m.requests.WithLabelValues(op, result).Inc() }

// TokenExpiry implements vault.Metrics.
func (m *Vault) TokenExpiry(t time.Time) {
	if t.IsZero() {
		m.expiry.Set(0)
		return
	}
	m.expiry.Set(float64(t.Unix()))
}

// JWTSVIDMinted implements ca.Metrics.
func (m *CA) JWTSVIDMinted(kind, result string) {
	if kind == "" {
		kind = "none"
	}
	m.jwt.WithLabelValues(kind, result).Inc()
}

// Issued implements ca.Metrics.
func (m *CA) Issued(kind, result string, took time.Duration) {
	if kind == "" {
		kind = "none"
	}
	m.issued.WithLabelValues(kind, result).Inc()
	if result == "ok" {
		m.duration.WithLabelValues(kind).Observe(took.Seconds())
	}
}

// SigningCAExpiry implements ca.Metrics.
func (m *CA) SigningCAExpiry(notAfter time.Time) { m.expiry.Set(float64(notAfter.Unix())) }

// API counts requests at the CSR API edge.
type API struct {
	reg      prometheus.Registerer
	requests *prometheus.CounterVec
	shed     prometheus.Counter
}

// NewAPI registers the API's collectors on reg.
func NewAPI(reg prometheus.Registerer) *API {
	m := &API{reg: reg, requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshca_api_requests_total",
		Help: "CSR API requests by protocol (grpc, http), endpoint and status code.",
	}, []string{"protocol", "endpoint", "code"}), shed: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshca_csr_shed_total",
		Help: "CSRs refused with ResourceExhausted and a retry hint because every signing slot was busy and the line full or too slow.",
	})}
	reg.MustRegister(m.requests, m.shed)
	return m
}

// Shed counts one CSR shed by the signing gate.
func (m *API) Shed() { m.shed.Inc() }

// Gate registers gauges read from the signing gate when scraped: the CSRs
// in progress and those waiting in line for a slot.
func (m *API) Gate(inFlight, queued func() float64) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshca_csr_in_flight", Help: "CSRs being attested, signed and recorded now."}, inFlight),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshca_csr_queued", Help: "CSRs waiting in line for a signing slot."}, queued),
	)
}

// Request counts one API request.
func (m *API) Request(protocol, endpoint, code string) {
	m.requests.WithLabelValues(protocol, endpoint, code).Inc()
}

// K8s implements k8s.Metrics.
type K8s struct {
	reviews   *prometheus.CounterVec
	latency   prometheus.Histogram
	hits      prometheus.Counter
	negHits   prometheus.Counter
	verHits   prometheus.Counter
	inFlight  prometheus.Gauge
	throttled prometheus.Counter
	refusals  *prometheus.CounterVec
	lookups   *prometheus.CounterVec
	lookupDur prometheus.Histogram
	renewals  *prometheus.CounterVec
	imperson  *prometheus.CounterVec
}

// NewK8s registers the Kubernetes attestors' collectors on reg.
func NewK8s(reg prometheus.Registerer) *K8s {
	m := &K8s{
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_k8s_tokenreviews_total",
			Help: "TokenReviews sent to the API server, by result (ok, unauthenticated, error).",
		}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshca_k8s_tokenreview_duration_seconds",
			Help:    "Latency of TokenReviews, client rate limiting included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_k8s_tokenreview_cache_hits_total",
			Help: "Tokens answered from the TokenReview cache.",
		}),
		negHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_k8s_tokenreview_negative_cache_hits_total",
			Help: "Tokens refused from the cache of refused TokenReviews, without asking the API server.",
		}),
		verHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_k8s_token_verify_cache_hits_total",
			Help: "ServiceAccount tokens the jwks and informer modes had verified before (same token, same key set, not expired) and did not verify again.",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshca_k8s_tokenreviews_in_flight",
			Help: "TokenReviews being sent now; at most the configured bound (16 by default).",
		}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_k8s_tokenreview_throttled_total",
			Help: "Requests that ended while waiting for a TokenReview slot; their review was never sent.",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_k8s_token_refusals_total",
			Help: "ServiceAccount tokens refused, by reason (malformed, issuer, audience and expired are refused offline, before any TokenReview; serviceaccount-gone, pod-gone, pod-node and unsupported-binding by the informer mode's caches).",
		}, []string{"reason"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_k8s_serviceaccount_lookups_total",
			Help: "ServiceAccount lookups sent to the API server for renewals, by result (found, not-found, error).",
		}, []string{"result"}),
		lookupDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshca_k8s_serviceaccount_lookup_duration_seconds",
			Help:    "Latency of ServiceAccount lookups, client rate limiting included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_k8s_renewal_admissions_total",
			Help: "Renewals over mTLS of Kubernetes-shaped identities, by admission result (ok, stale, denied, deleted, unavailable).",
		}, []string{"result"}),
		imperson: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_k8s_impersonations_total",
			Help: "Requests of trusted node agents (Istio ambient's ztunnel) for a certificate of another identity, by result (ok, or the reason refused: not-configured, no-pod-cache, untrusted, malformed, denied, not-synced, caller-pod, not-on-node).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.reviews, m.latency, m.hits, m.negHits, m.verHits, m.inFlight, m.throttled, m.refusals, m.lookups, m.lookupDur, m.renewals, m.imperson)
	return m
}

// Review implements k8s.Metrics.
func (m *K8s) Review(result string, took time.Duration) {
	m.reviews.WithLabelValues(result).Inc()
	m.latency.Observe(took.Seconds())
}

// CacheHit implements k8s.Metrics.
func (m *K8s) CacheHit() { m.hits.Inc() }

// NegativeCacheHit implements k8s.Metrics.
func (m *K8s) NegativeCacheHit() { m.negHits.Inc() }

// VerifiedCacheHit implements k8s.Metrics.
func (m *K8s) VerifiedCacheHit() { m.verHits.Inc() }

// ReviewsInFlight implements k8s.Metrics.
func (m *K8s) ReviewsInFlight(n int) { m.inFlight.Set(float64(n)) }

// Throttled implements k8s.Metrics.
func (m *K8s) Throttled() { m.throttled.Inc() }

// Refused implements k8s.Metrics.
func (m *K8s) Refused(reason string) { m.refusals.WithLabelValues(reason).Inc() }

// ServiceAccountLookup implements k8s.Metrics.
func (m *K8s) ServiceAccountLookup(result string, took time.Duration) {
	m.lookups.WithLabelValues(result).Inc()
	m.lookupDur.Observe(took.Seconds())
}

// Renewal implements k8s.Metrics.
func (m *K8s) Renewal(result string) { m.renewals.WithLabelValues(result).Inc() }

// Impersonation implements k8s.Metrics.
func (m *K8s) Impersonation(result string) { m.imperson.WithLabelValues(result).Inc() }

// Agent implements sds.Metrics and envoy.Metrics for `meshca agent`.
type Agent struct {
	renewals *prometheus.CounterVec
	expiry   prometheus.Gauge
	nacks    prometheus.Counter
	pushes   prometheus.Counter
	streams  prometheus.Gauge
}

// NewAgent registers the agent's collectors on reg.
func NewAgent(reg prometheus.Registerer) *Agent {
	m := &Agent{
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_agent_renewals_total",
			Help: "Requests to the CA for the workload's SVID, by result (ok, error).",
		}, []string{"result"}),
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshca_agent_svid_expiry_timestamp_seconds",
			Help: "NotAfter of the SVID being served, as a Unix time; time to expiry is this minus time().",
		}),
		nacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_agent_sds_nacks_total",
			Help: "SDS responses Envoy rejected.",
		}),
		pushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_agent_sds_pushes_total",
			Help: "Changed SVIDs published to open SDS streams.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshca_agent_sds_streams",
			Help: "Open SDS streams at the last push.",
		}),
	}
	reg.MustRegister(m.renewals, m.expiry, m.nacks, m.pushes, m.streams)
	return m
}

// Renewed implements sds.Metrics.
func (m *Agent) Renewed(ok bool) {
	if ok {
		m.renewals.WithLabelValues("ok").Inc()
	} else {
		m.renewals.WithLabelValues("error").Inc()
	}
}

// Expiry implements sds.Metrics.
func (m *Agent) Expiry(notAfter time.Time) { m.expiry.Set(float64(notAfter.Unix())) }

// NACK implements envoy.Metrics.
func (m *Agent) NACK() { m.nacks.Inc() }

// Push implements envoy.Metrics.
func (m *Agent) Push(streams int) {
	m.pushes.Inc()
	m.streams.Set(float64(streams))
}

// Bundle implements bundle.Metrics: what the trust bundle's publishers
// (ConfigMaps, ClusterTrustBundle, SPIFFE bundle endpoint) do.
type Bundle struct {
	published *prometheus.GaugeVec
	failures  *prometheus.CounterVec
	foreign   *prometheus.GaugeVec
	sequence  prometheus.Gauge
}

// NewBundle registers the bundle publishers' collectors on reg.
func NewBundle(reg prometheus.Registerer) *Bundle {
	m := &Bundle{
		published: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshca_bundle_last_publish_timestamp_seconds",
			Help: "When an object of the target (configmap, clustertrustbundle) last held the current trust bundle, written or found up to date, as a Unix time.",
		}, []string{"target"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_bundle_publish_errors_total",
			Help: "Writes of the trust bundle to the target (configmap, clustertrustbundle) that failed and are retried with backoff.",
		}, []string{"target"}),
		foreign: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshca_bundle_foreign_objects",
			Help: "Objects of the bundle's name that are not labelled as meshca's and are left alone (configmap: one per namespace).",
		}, []string{"target"}),
		sequence: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshca_bundle_endpoint_sequence",
			Help: "The spiffe_sequence the SPIFFE bundle endpoint serves.",
		}),
	}
	reg.MustRegister(m.published, m.failures, m.foreign, m.sequence)
	return m
}

// Published implements bundle.Metrics.
func (m *Bundle) Published(target string, t time.Time) {
	m.published.WithLabelValues(target).Set(float64(t.Unix()))
}

// Failed implements bundle.Metrics.
func (m *Bundle) Failed(target string) { m.failures.WithLabelValues(target).Inc() }

// Foreign implements bundle.Metrics.
func (m *Bundle) Foreign(target string, n int) { m.foreign.WithLabelValues(target).Set(float64(n)) }

// Sequence implements bundle.Metrics.
func (m *Bundle) Sequence(n uint64) { m.sequence.Set(float64(n)) }

// Store implements boltstore.Metrics and pgstore.Metrics: the durable
// record's group commits and, for bbolt, its journal's checkpoints.
type Store struct {
	records     prometheus.Histogram
	commit      prometheus.Histogram
	checkpoint  prometheus.Histogram
	checkpoints prometheus.Counter
}

// NewStore registers the store's collectors on reg: those of the group
// commits, and with journal those of the checkpoints of boltstore's
// journal (a store without one would show them empty forever).
func NewStore(reg prometheus.Registerer, journal bool) *Store {
	m := &Store{
		records: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshca_store_commit_records",
			Help:    "Issuance records written by one group commit (bbolt: one journal write and fdatasync; PostgreSQL: one INSERT and commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshca_store_commit_duration_seconds",
			Help:    "Time of one group commit of issuance records, fdatasync or database commit included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
		}),
		checkpoint: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshca_store_checkpoint_duration_seconds",
			Help:    "Time of one checkpoint of the issuance journal into the data file.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		checkpoints: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_store_checkpointed_records_total",
			Help: "Issuance records copied from the journal into the data file by checkpoints.",
		}),
	}
	reg.MustRegister(m.records, m.commit)
	if journal {
		reg.MustRegister(m.checkpoint, m.checkpoints)
	}
	return m
}

// Committed implements boltstore.Metrics and pgstore.Metrics.
func (m *Store) Committed(records int, took time.Duration) {
	m.records.Observe(float64(records))
	m.commit.Observe(took.Seconds())
}

// Checkpointed implements boltstore.Metrics.
func (m *Store) Checkpointed(records int, took time.Duration) {
	m.checkpoint.Observe(took.Seconds())
	m.checkpoints.Add(float64(records))
}

// Leader implements leader.Metrics: this replica's part in the election of
// one leader among replicas (--leader-elect).
type Leader struct {
	leading     prometheus.Gauge
	transitions prometheus.Counter
}

// NewLeader registers the leader elector's collectors on reg.
func NewLeader(reg prometheus.Registerer) *Leader {
	m := &Leader{
		leading: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshca_leader",
			Help: "1 while this replica holds the leader Lease and runs the leader's jobs (root rotation steps, pruning, bundle ConfigMaps and ClusterTrustBundle), else 0.",
		}),
		transitions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshca_leader_transitions_total",
			Help: "Changes of the leader Lease's holder to a new leader that this replica observed (its first observation included); a steady rise means leadership flaps.",
		}),
	}
	reg.MustRegister(m.leading, m.transitions)
	return m
}

// Leading implements leader.Metrics.
func (m *Leader) Leading(leading bool) {
	if leading {
		m.leading.Set(1)
		return
	}
	m.leading.Set(0)
}

// NewLeader implements leader.Metrics.
func (m *Leader) NewLeader() { m.transitions.Inc() }

// PodCert implements podcert.Metrics: the pod certificate signer
// (--pod-certificate-signer).
type PodCert struct {
	requests *prometheus.CounterVec
	issued   prometheus.Histogram
}

// NewPodCert registers the pod certificate signer's collectors on reg.
func NewPodCert(reg prometheus.Registerer) *PodCert {
	m := &PodCert{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_podcert_requests_total",
			Help: "PodCertificateRequests answered, by result (issued, resent: the certificate signed for it before, sent again; denied, failed) and the condition's reason; and attempts retried (result retry, reason signing or status-update).",
		}, []string{"result", "reason"}),
		issued: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshca_podcert_issue_seconds",
			Help:    "Time from a PodCertificateRequest's creation to its Issued status, as the kubelet waits for it.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
	}
	reg.MustRegister(m.requests, m.issued)
	return m
}

// Request implements podcert.Metrics.
func (m *PodCert) Request(result, reason string) { m.requests.WithLabelValues(result, reason).Inc() }

// Issued implements podcert.Metrics.
func (m *PodCert) Issued(took time.Duration) { m.issued.Observe(took.Seconds()) }

// Federation implements federation.Metrics: the fetches of the trust
// bundles of the trust domains the CA federates with.
type Federation struct {
	refreshed *prometheus.GaugeVec
	failures  *prometheus.CounterVec
	sequence  *prometheus.GaugeVec
}

// NewFederation registers the federation's collectors on reg.
func NewFederation(reg prometheus.Registerer) *Federation {
	m := &Federation{
		refreshed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshca_federation_last_success_timestamp_seconds",
			Help: "When the trust domain's bundle was last fetched (or its file read) and found good, as a Unix time; only the replica that fetches (the leader) sets it.",
		}, []string{"trust_domain"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_federation_fetch_failures_total",
			Help: "Fetches of the trust domain's bundle that failed (unreachable, refused, malformed); the last good bundle stays in use and the fetch is retried with backoff.",
		}, []string{"trust_domain"}),
		sequence: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshca_federation_bundle_sequence",
			Help: "The spiffe_sequence of the trust domain's bundle this replica serves.",
		}, []string{"trust_domain"}),
	}
	reg.MustRegister(m.refreshed, m.failures, m.sequence)
	return m
}

// Refreshed implements federation.Metrics.
func (m *Federation) Refreshed(td string, t time.Time) {
	m.refreshed.WithLabelValues(td).Set(float64(t.Unix()))
}

// Failed implements federation.Metrics.
func (m *Federation) Failed(td string) { m.failures.WithLabelValues(td).Inc() }

// Sequence implements federation.Metrics.
func (m *Federation) Sequence(td string, n uint64) { m.sequence.WithLabelValues(td).Set(float64(n)) }

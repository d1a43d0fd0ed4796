// Package envoy serves a workload's SVID to Envoy over the Secret Discovery
// Service (SDS), as Envoy speaks it.
//
// The protocol is go-control-plane's: a LinearCache holds the secrets and
// its server handles versions, nonces, ACKs, NACKs, several resources on a
// stream, several streams, wildcard requests and delta streams. This package
// keeps the cache in step with an sds.Source and adds what Envoy's peers
// expect of an SDS server on a node:
//
//   - resource names "default" (chain and key) and "ROOTCA" (trusted CA),
//     as Istio's bootstrap asks for them, and SPIRE's names: the workload's
//     SPIFFE ID (chain and key) and "spiffe://<trust domain>" (trusted CA);
//   - with Config.SPIFFEValidator, the trust bundles as SPIRE's agent
//     serves them to Envoy 1.18 and later: "ROOTCA", "spiffe://<trust
//     domain>" and "ALL" configure Envoy's SPIFFE certificate validator
//     (envoy.tls.cert_validator.spiffe) with one bundle per trust domain,
//     so each trust domain's peers verify by that trust domain's roots:
//     "ROOTCA" the workload's own trust domain, "spiffe://<td>" that trust
//     domain's (its own, or a federated one the SVID carries), "ALL" every
//     one; a change of a federated bundle is pushed like a rotation;
//   - a name that is not served gets no response and no error: Envoy waits
//     for it, as it would for a secret that is not ready yet;
//   - a NACK is logged and counted and never answered with the same
//     version again: the next response is the next change;
//   - a request naming more than MaxResourceNames resources, or another
//     resource type, ends that stream with InvalidArgument and touches no
//     other stream;
//   - FetchSecrets answers with the current secrets.
//
// Use:
//
//	srv, err := envoy.New(envoy.Config{Source: manager, Logger: log})
//	g := grpc.NewServer()
//	srv.Register(g)
//	go srv.Run(ctx) // streams end when ctx is done, so g.GracefulStop returns
//	g.Serve(listener)
package envoy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	cplog "github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/sds"
)

// MaxResourceNames is the most resource names one request may carry (and,
// on a delta stream, the most a stream may be subscribed to). Envoy asks for
// one or two; the bound keeps a client from making the server track
// thousands.
const MaxResourceNames = 100

// Metrics is what the server reports. A nil Config.Metrics reports nothing.
type Metrics interface {
	// NACK counts a response Envoy rejected.
	NACK()
	// Push records that a changed SVID was published while streams SDS
	// streams were open; every one subscribed to a changed name gets it.
	Push(streams int)
}

type nopMetrics struct{}

func (nopMetrics) NACK()    {}
func (nopMetrics) Push(int) {}

// Config configures a Server. Source is required; zero fields get the
// documented defaults.
type Config struct {
	// Source gives the SVID to serve and says when it changes.
	Source sds.Source
	// Logger receives the server's logs; default: discarded.
	Logger *slog.Logger
	// Metrics receives counts; default: none kept.
	Metrics Metrics
	// SPIFFEValidator serves the validation contexts (RootCAName, the
	// trust domains' IDs, and AllName) as configurations of Envoy's SPIFFE
	// certificate validator instead of trusted CAs. Default false: trusted
	// CAs, and no AllName.
	SPIFFEValidator bool
}

// Server is an SDS server for one workload's SVID.
type Server struct {
	src    sds.Source
	log    *slog.Logger
	m      Metrics
	spiffe bool // Config.SPIFFEValidator
	cache  *cache.LinearCache
	xds    serverv3.Server
	stop   context.CancelFunc // ends every stream

	streams atomic.Int64 // open SotW and delta streams

	mu        sync.Mutex // serialises publishing; guards the fields below
	last      *sds.SVID
	published map[string]*tlsv3.Secret
	version   uint64 // the cache's version: one step per publication

	deltaMu    sync.Mutex
	deltaNames map[int64]map[string]struct{} // delta stream -> subscribed names
}

// New returns a server serving cfg.Source's current SVID (if any); Run
// keeps it current.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("envoy: Config.Source is required")
	}
	s := &Server{
		src:        cfg.Source,
		log:        cfg.Logger,
		m:          cfg.Metrics,
		spiffe:     cfg.SPIFFEValidator,
		published:  map[string]*tlsv3.Secret{},
		deltaNames: map[int64]map[string]struct{}{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.m == nil {
		s.m = nopMetrics{}
	}
	cpl := controlPlaneLogger(s.log)
	s.cache = cache.NewLinearCache(resource.SecretType, cache.WithLogger(cpl))
	ctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.xds = serverv3.NewServer(ctx, secretCache{LinearCache: s.cache, s: s}, callbacks{s}, sotw.WithLogger(cpl))
	s.sync()
	return s, nil
}

// Register registers the SecretDiscoveryService (StreamSecrets,
// DeltaSecrets, FetchSecrets) on g.
func (s *Server) Register(g *grpc.Server) {
	secretservice.RegisterSecretDiscoveryServiceServer(g, s.xds)
}

// Run keeps the served secrets in step with the Source until ctx is done,
// then ends every open stream (so a grpc GracefulStop can return) and
// returns nil. Streams opened after Run returns end at once.
func (s *Server) Run(ctx context.Context) error {
	defer s.stop()
	changed, unsubscribe := s.src.Subscribe()
	defer unsubscribe()
	s.sync() // what changed between New and Subscribe
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			s.sync()
		}
	}
}

// sync publishes the Source's current SVID if it is new: the secrets whose
// content changed are updated in one cache version, so each stream gets one
// response per change.
func (s *Server) sync() {
	svid := s.src.Current()
	if svid == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if svid == s.last {
		return
	}
	next, err := secrets(svid, s.spiffe)
	if err != nil {
		// Keep serving what Envoy has; the next change may be usable.
		s.log.Error("envoy: cannot publish the SVID", "spiffe_id", svid.ID.String(), "svid_version", svid.Version, "err", err)
		return
	}
	s.last = svid
	update := map[string]types.Resource{}
	for name, sec := range next {
		if old, ok := s.published[name]; !ok || !proto.Equal(old, sec) {
			update[name] = sec
		}
	}
	var remove []string
	for name := range s.published {
		if _, ok := next[name]; !ok {
			remove = append(remove, name)
		}
	}
	if len(update) == 0 && len(remove) == 0 {
		return
	}
	s.published = next
	s.version++
	if err := s.cache.UpdateResources(update, remove); err != nil {
		s.log.Error("envoy: notifying streams", "err", err)
	}
	streams := int(s.streams.Load())
	s.m.Push(streams)
	s.log.Info("envoy: published SVID", "spiffe_id", svid.ID.String(), "svid_version", svid.Version,
		"not_after", svid.NotAfter(), "version", s.version, "changed", slices.Sorted(maps.Keys(update)), "streams", streams)
}

// secretCache is the LinearCache with two changes.
type secretCache struct {
	*cache.LinearCache
	s *Server
}

// unversioned stands in for an empty version_info; see CreateWatch.
const unversioned = "none"

// CreateWatch keeps the LinearCache from answering a request that carries
// no version_info with an empty response. The cache reads an empty version
// as "the client has nothing: reply even if nothing matches", and Envoy
// rejects an SDS response without the secret it asked for ("Missing SDS
// resources"). So an initial request for names that are not served would
// get an empty response and a NACK back; and since Envoy NACKs a first
// response with an empty version_info, every NACK would be answered with
// an empty response, NACKed again, in a loop. With a placeholder version
// the cache replies only with secrets the stream has not been sent yet: a
// new stream gets what exists of what it named, a NACK waits for the next
// change, and an unknown name waits (silently) until it is served.
func (c secretCache) CreateWatch(req *cache.Request, sub cache.Subscription, ch chan cache.Response) (func(), error) {
	if req.GetVersionInfo() == "" {
		req = proto.Clone(req).(*cache.Request)
		req.VersionInfo = unversioned
	}
	return c.LinearCache.CreateWatch(req, sub, ch)
}

// Fetch answers FetchSecrets (the LinearCache has no Fetch) with the
// current secrets among those named, or all for an empty or "*" list.
func (c secretCache) Fetch(_ context.Context, req *cache.Request) (cache.Response, error) {
	s := c.s
	s.mu.Lock()
	version := s.version
	published := s.published
	s.mu.Unlock()

	names := req.GetResourceNames()
	all := len(names) == 0 || slices.Contains(names, "*")
	if all {
		names = slices.Sorted(maps.Keys(published))
	}
	out := &discovery.DiscoveryResponse{VersionInfo: fmt.Sprint(version), TypeUrl: resource.SecretType}
	for _, name := range names {
		sec, ok := published[name]
		if !ok {
			continue
		}
		a, err := anypb.New(sec)
		if err != nil {
			s.log.Error("envoy: encoding a secret", "name", name, "err", err)
			return nil, status.Error(codes.Internal, "sds: cannot encode the secret")
		}
		out.Resources = append(out.Resources, a)
	}
	return &cache.PassthroughResponse{Request: req, DiscoveryResponse: out}, nil
}

// callbacks bound requests, count NACKs and streams, and log.
type callbacks struct{ s *Server }

var _ serverv3.Callbacks = callbacks{}

func (c callbacks) OnStreamOpen(_ context.Context, id int64, _ string) error {
	c.s.streams.Add(1)
	c.s.log.Debug("envoy: stream opened", "stream", id)
	return nil
}

func (c callbacks) OnStreamClosed(id int64, node *core.Node) {
	c.s.streams.Add(-1)
	c.s.log.Debug("envoy: stream closed", "stream", id, "node", node.GetId())
}

func (c callbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	if err := checkRequest(req.GetTypeUrl(), len(req.GetResourceNames())); err != nil {
		c.s.log.Warn("envoy: request refused", "stream", id, "node", req.GetNode().GetId(), "err", err)
		return err
	}
	c.observe(id, req.GetNode().GetId(), req.GetVersionInfo(), req.GetResponseNonce(), req.GetErrorDetail(), req.GetResourceNames())
	return nil
}

func (c callbacks) OnStreamResponse(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	c.s.log.Debug("envoy: response", "stream", id, "version", resp.GetVersionInfo(), "nonce", resp.GetNonce(), "resources", len(resp.GetResources()))
}

func (c callbacks) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	c.s.streams.Add(1)
	c.s.log.Debug("envoy: delta stream opened", "stream", id)
	return nil
}

func (c callbacks) OnDeltaStreamClosed(id int64, node *core.Node) {
	c.s.streams.Add(-1)
	c.s.deltaMu.Lock()
	delete(c.s.deltaNames, id)
	c.s.deltaMu.Unlock()
	c.s.log.Debug("envoy: delta stream closed", "stream", id, "node", node.GetId())
}

func (c callbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	// A delta stream accumulates subscriptions: bound the total.
	c.s.deltaMu.Lock()
	names := c.s.deltaNames[id]
	if names == nil {
		names = map[string]struct{}{}
		c.s.deltaNames[id] = names
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		delete(names, n)
	}
	for _, n := range req.GetResourceNamesSubscribe() {
		names[n] = struct{}{}
		if len(names) > MaxResourceNames {
			break
		}
	}
	total := max(len(names), len(req.GetResourceNamesSubscribe()), len(req.GetInitialResourceVersions()))
	c.s.deltaMu.Unlock()
	typeURL := req.GetTypeUrl()
	if typeURL == "" { // implicit; the delta server fills it in after this callback
		typeURL = resource.SecretType
	}
	if err := checkRequest(typeURL, total); err != nil {
		c.s.log.Warn("envoy: delta request refused", "stream", id, "node", req.GetNode().GetId(), "err", err)
		return err
	}
	c.observe(id, req.GetNode().GetId(), "", req.GetResponseNonce(), req.GetErrorDetail(), req.GetResourceNamesSubscribe())
	return nil
}

func (c callbacks) OnStreamDeltaResponse(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	c.s.log.Debug("envoy: delta response", "stream", id, "nonce", resp.GetNonce(), "resources", len(resp.GetResources()), "removed", len(resp.GetRemovedResources()))
}

func (c callbacks) OnFetchRequest(_ context.Context, req *discovery.DiscoveryRequest) error {
	if err := checkRequest(req.GetTypeUrl(), len(req.GetResourceNames())); err != nil {
		c.s.log.Warn("envoy: fetch refused", "node", req.GetNode().GetId(), "err", err)
		return err
	}
	return nil
}

func (c callbacks) OnFetchResponse(_ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	c.s.log.Debug("envoy: fetch", "version", resp.GetVersionInfo(), "resources", len(resp.GetResources()))
}

// observe logs a request and counts it if it is a NACK.
func (c callbacks) observe(id int64, node, version, nonce string, nack *rpcstatus.Status, names []string) {
	if nack != nil {
		c.s.m.NACK()
		c.s.log.Warn("envoy: Envoy rejected a secret", "stream", id, "node", node, "nonce", nonce,
			"accepted_version", version, "code", nack.GetCode(), "error", truncate(nack.GetMessage(), 512))
		return
	}
	c.s.log.Debug("envoy: request", "stream", id, "node", node, "version", version, "nonce", nonce, "names", names)
}

// checkRequest returns the InvalidArgument status for a request this server
// does not serve, and nil otherwise. The type URL is empty when it was left
// implicit, which the server fills in before the callbacks run.
func checkRequest(typeURL string, names int) error {
	if typeURL != resource.SecretType {
		return status.Errorf(codes.InvalidArgument, "sds: type_url %q is not served here; this server serves only %s", truncate(typeURL, 128), resource.SecretType)
	}
	if names > MaxResourceNames {
		return status.Errorf(codes.InvalidArgument, "sds: request names %d resources; at most %d are allowed", names, MaxResourceNames)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// controlPlaneLogger sends go-control-plane's logs to l: its Info (one line
// per watch) at Debug, its warnings and errors as such. Formatting happens
// only when the level is enabled.
func controlPlaneLogger(l *slog.Logger) cplog.Logger {
	at := func(level slog.Level) func(string, ...any) {
		return func(format string, args ...any) {
			if l.Enabled(context.Background(), level) {
				l.Log(context.Background(), level, "go-control-plane: "+fmt.Sprintf(format, args...))
			}
		}
	}
	return cplog.LoggerFuncs{
		DebugFunc: at(slog.LevelDebug),
		InfoFunc:  at(slog.LevelDebug),
		WarnFunc:  at(slog.LevelWarn),
		ErrorFunc: at(slog.LevelError),
	}
}

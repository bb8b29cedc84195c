// xds-reference: an ADS server on go-control-plane, the reference that bench/xds_compare.py measures
// the agent's xDS server against (same clients, same resource bytes, same machine).
//
//	xds-reference -cache linear|snapshot -grpc 127.0.0.1:0 -control 127.0.0.1:0 -deadline 10m
//
// It serves CDS and EDS over SotW and delta ADS (one gRPC server, both methods). The harness drives it
// over a loopback HTTP control port:
//
//	POST /stage?type=<type URL>  body: records (uvarint name length, name, uvarint length, google.protobuf.Any)
//	                             decoded into messages and held; not yet served
//	POST /commit                 serve what was staged: LinearCache.UpdateResources per type, or one new
//	                             snapshot (EDS version bumped, CDS version kept unless clusters were staged)
//	GET  /ready                  200 once the gRPC port is bound
//
// The first line on stdout is "grpc=<addr> control=<addr>". The process exits when -deadline passes or when
// stdin reaches EOF (the harness went away), so it never outlives a benchmark.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
)

const maxStageBytes = 256 << 20 // one staged resource set; 10,000 endpoints are ~1 MB

var served = []string{resourcev3.ClusterType, resourcev3.EndpointType}

// quiet drops go-control-plane's logs: per-request debug lines would cost CPU the agent does not spend.
type quiet struct{}

func (quiet) Debugf(string, ...any) {}
func (quiet) Infof(string, ...any)  {}
func (quiet) Warnf(string, ...any)  {}
func (quiet) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "xds-reference: "+format+"\n", args...)
}

// oneNode puts every Envoy on the same snapshot: the SnapshotCache's best setup for identical nodes.
type oneNode struct{}

func (oneNode) ID(*corev3.Node) string { return "all" }

type backend interface {
	commit(staged map[string]map[string]types.Resource) error
	cache() cachev3.Cache
}

// linear: one LinearCache per type behind a MuxCache (go-control-plane's fit for large EDS sets).
type linear struct {
	caches map[string]*cachev3.LinearCache
	mux    *cachev3.MuxCache
}

func newLinear() *linear {
	l := &linear{caches: map[string]*cachev3.LinearCache{}}
	muxed := map[string]cachev3.Cache{}
	for _, typeURL := range served {
		c := cachev3.NewLinearCache(typeURL, cachev3.WithLogger(quiet{}))
		l.caches[typeURL] = c
		muxed[typeURL] = c
	}
	l.mux = &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        muxed,
	}
	return l
}

func (l *linear) cache() cachev3.Cache { return l.mux }

func (l *linear) commit(staged map[string]map[string]types.Resource) error {
	for _, typeURL := range served { // clusters before their endpoints
		if resources, ok := staged[typeURL]; ok {
			if err := l.caches[typeURL].UpdateResources(resources, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// snapshot: a SnapshotCache holding one snapshot for every node; a commit makes the next snapshot.
type snapshot struct {
	sc       cachev3.SnapshotCache
	current  map[string]map[string]types.Resource
	versions map[string]int
}

func newSnapshot() *snapshot {
	return &snapshot{sc: cachev3.NewSnapshotCache(false, oneNode{}, quiet{}),
		current: map[string]map[string]types.Resource{}, versions: map[string]int{}}
}

func (s *snapshot) cache() cachev3.Cache { return s.sc }

func (s *snapshot) commit(staged map[string]map[string]types.Resource) error {
	next := &cachev3.Snapshot{}
	for _, typeURL := range served {
		merged := map[string]types.Resource{}
		for name, r := range s.current[typeURL] {
			merged[name] = r
		}
		if resources, ok := staged[typeURL]; ok {
			for name, r := range resources {
				merged[name] = r
			}
			s.versions[typeURL]++ // a type whose resources did not change keeps its version: no push
		}
		s.current[typeURL] = merged
		items := make([]types.Resource, 0, len(merged))
		for _, r := range merged {
			items = append(items, r)
		}
		next.Resources[cachev3.GetResponseType(typeURL)] = cachev3.NewResources(strconv.Itoa(s.versions[typeURL]), items)
	}
	return s.sc.SetSnapshot(context.Background(), "all", next)
}

type controller struct {
	mu      sync.Mutex
	backend backend
	staged  map[string]map[string]types.Resource
}

func decode(typeURL string, body []byte) (map[string]types.Resource, error) {
	out := map[string]types.Resource{}
	for len(body) > 0 {
		name, rest, err := field(body)
		if err != nil {
			return nil, err
		}
		value, rest, err := field(rest)
		if err != nil {
			return nil, err
		}
		body = rest
		packed := &anypb.Any{}
		if err := proto.Unmarshal(value, packed); err != nil {
			return nil, fmt.Errorf("resource %q: %w", name, err)
		}
		if packed.TypeUrl != typeURL {
			return nil, fmt.Errorf("resource %q is a %s, staged as %s", name, packed.TypeUrl, typeURL)
		}
		var message proto.Message
		switch typeURL {
		case resourcev3.ClusterType:
			message = &clusterv3.Cluster{}
		case resourcev3.EndpointType:
			message = &endpointv3.ClusterLoadAssignment{}
		default:
			return nil, fmt.Errorf("type %s is not served", typeURL)
		}
		if err := packed.UnmarshalTo(message); err != nil {
			return nil, fmt.Errorf("resource %q: %w", name, err)
		}
		out[string(name)] = message
	}
	return out, nil
}

func field(body []byte) ([]byte, []byte, error) {
	length, n := binary.Uvarint(body)
	if n <= 0 || uint64(len(body)-n) < length {
		return nil, nil, errors.New("truncated record")
	}
	return body[n : n+int(length)], body[n+int(length):], nil
}

func (c *controller) stage(w http.ResponseWriter, r *http.Request) {
	typeURL := r.URL.Query().Get("type")
	body, err := io.ReadAll(io.LimitReader(r.Body, maxStageBytes))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resources, err := decode(typeURL, body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.staged[typeURL] = resources
	c.mu.Unlock()
	fmt.Fprintf(w, "staged %d\n", len(resources))
}

func (c *controller) commit(w http.ResponseWriter, _ *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.backend.commit(c.staged); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	c.staged = map[string]map[string]types.Resource{}
	fmt.Fprintln(w, "committed")
}

func main() {
	kind := flag.String("cache", "linear", "linear (LinearCache per type) or snapshot (SnapshotCache)")
	grpcAddr := flag.String("grpc", "127.0.0.1:0", "ADS listen address (loopback)")
	controlAddr := flag.String("control", "127.0.0.1:0", "control HTTP listen address (loopback)")
	deadline := flag.Duration("deadline", 10*time.Minute, "exit after this long whatever happens")
	flag.Parse()
	if err := run(*kind, *grpcAddr, *controlAddr, *deadline); err != nil {
		fmt.Fprintln(os.Stderr, "xds-reference:", err)
		os.Exit(2)
	}
}

func loopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s is not a loopback address", addr)
	}
	return nil
}

func run(kind, grpcAddr, controlAddr string, deadline time.Duration) error {
	var b backend
	switch kind {
	case "linear":
		b = newLinear()
	case "snapshot":
		b = newSnapshot()
	default:
		return fmt.Errorf("-cache must be linear or snapshot, not %q", kind)
	}
	for _, addr := range []string{grpcAddr, controlAddr} {
		if err := loopback(addr); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	go func() { // the harness holds our stdin: EOF means it is gone
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()

	grpcListener, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		return err
	}
	controlListener, err := net.Listen("tcp", controlAddr)
	if err != nil {
		return err
	}
	// As go-control-plane's example server: many concurrent streams, one connection per Envoy.
	grpcServer := grpc.NewServer(grpc.MaxConcurrentStreams(1_000_000))
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(grpcServer, serverv3.NewServer(ctx, b.cache(), serverv3.CallbackFuncs{}))

	c := &controller{backend: b, staged: map[string]map[string]types.Resource{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /stage", c.stage)
	mux.HandleFunc("POST /commit", c.commit)
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ready") })
	control := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	errs := make(chan error, 2)
	go func() { errs <- grpcServer.Serve(grpcListener) }()
	go func() { errs <- control.Serve(controlListener) }()
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "grpc=%s control=%s\n", grpcListener.Addr(), controlListener.Addr())
	if err := out.Flush(); err != nil {
		return err
	}

	select {
	case <-ctx.Done():
	case err := <-errs:
		cancel()
		return err
	}
	_ = control.Close()
	grpcServer.Stop()
	return nil
}

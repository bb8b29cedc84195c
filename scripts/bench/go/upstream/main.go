// Command upstream is a tiny inference-instance stand-in for the data-plane
// benchmarks: a Go HTTP/1.1 server that answers every request with the header
// X-Instance-Id and a small JSON body, after a fixed service time, with at most
// -concurrency requests in service at once (the others queue for a slot, as on
// a real inference instance with a fixed number of model workers).
//
// It exists so that the instances are never the bottleneck of a benchmark that
// means to measure Envoy: Python instances top out at a few thousand requests
// per second on a small machine, this one at tens of thousands.
//
//	upstream -addr 127.0.0.21:0 -id i1 -service-ms 10 -concurrency 4 -ready-file /tmp/i1.port
//
// GET /health answers at once (no slot, no service time). A request header
// X-Delay-Ms adds that many milliseconds of service time to that one request.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (port 0: any free port)")
	id := flag.String("id", "instance", "value of the X-Instance-Id response header")
	serviceMs := flag.Float64("service-ms", 0, "fixed service time per request, in milliseconds")
	concurrency := flag.Int("concurrency", 0, "requests in service at once (0: unlimited); the rest queue")
	readyFile := flag.String("ready-file", "", "write the bound ip:port here once listening")
	flag.Parse()

	var slots chan struct{}
	if *concurrency > 0 {
		slots = make(chan struct{}, *concurrency)
	}
	service := time.Duration(*serviceMs * float64(time.Millisecond))
	body := []byte(fmt.Sprintf("{\"instance_id\":%q}\n", *id))
	var served atomic.Int64

	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance-Id", *id)
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if slots != nil {
			select {
			case slots <- struct{}{}:
			case <-r.Context().Done():
				return
			}
			defer func() { <-slots }()
		}
		delay := service
		if extra := r.Header.Get("X-Delay-Ms"); extra != "" {
			if ms, err := strconv.ParseFloat(extra, 64); err == nil && ms > 0 {
				delay += time.Duration(ms * float64(time.Millisecond))
			}
		}
		if delay > 0 {
			time.Sleep(delay)
		}
		served.Add(1)
		h := w.Header()
		h.Set("X-Instance-Id", *id)
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	if *readyFile != "" {
		tmp := *readyFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(ln.Addr().String()+"\n"), 0o644); err != nil {
			log.Fatal(err)
		}
		if err := os.Rename(tmp, *readyFile); err != nil {
			log.Fatal(err)
		}
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		// HTTP/1.1 only, like the instances Envoy's clusters talk to.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		log.Fatal(err)
	}
	log.Printf("%s served %d requests", *id, served.Load())
}

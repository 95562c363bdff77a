// A document portal written the way most Go portals are: net/http, one goroutine per
// connection, and an internal HTTP call to a session service before each document read. Go
// moves goroutines between OS threads at every blocking point, so the thread that read a
// request head is often not the one that reads its document: Vigie's end-to-end tests use it to
// check that attribution follows goroutines, not threads (standard library only, built by the
// test harness with Debian's golang-go).
//
// Usage: go-portal --root DIR [--style read|copy]
// Prints "LISTENING ip:port" once it serves. GET /docs/<owner>/<name> serves
// DIR/users/<owner>/<name> to anyone (the portal's bug: no ownership check), as the user named
// by the X-Remote-User header of a trusted proxy.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

func main() {
	root := flag.String("root", "", "document root (holds users/<owner>/<name>)")
	style := flag.String("style", "read", "read: read the whole file, then write it; copy: io.Copy (512 bytes read, then sendfile)")
	flag.Parse()
	if *root == "" || (*style != "read" && *style != "copy") {
		fmt.Fprintln(os.Stderr, "usage: go-portal --root DIR [--style read|copy]")
		os.Exit(2)
	}

	// The session service: answered at once, so the goroutine that calls it resumes quickly,
	// often on another thread, while the caller's thread serves someone else.
	sessions, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	go func() {
		mux := http.NewServeMux()
		mux.HandleFunc("/session", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintf(w, "valid %s\n", r.URL.Query().Get("user"))
		})
		fmt.Fprintln(os.Stderr, "session service:", http.Serve(sessions, mux))
	}()
	sessionURL := "http://" + sessions.Addr().String() + "/session?user="
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

	mux := http.NewServeMux()
	mux.HandleFunc("/docs/", func(w http.ResponseWriter, r *http.Request) {
		user := r.Header.Get("X-Remote-User")
		resp, err := client.Get(sessionURL + url.QueryEscape(user))
		if err != nil {
			http.Error(w, "session service: "+err.Error(), http.StatusBadGateway)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()

		rest := strings.TrimPrefix(r.URL.Path, "/docs/")
		if strings.Contains(rest, "..") || strings.Count(rest, "/") != 1 {
			http.NotFound(w, r)
			return
		}
		path := filepath.Join(*root, "users", rest)
		if *style == "read" {
			body, err := os.ReadFile(path)
			if err != nil {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body)
			return
		}
		f, err := os.Open(path)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		info, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		// A known length keeps the response unchunked: net/http then sends the file with
		// sendfile after the 512 bytes it reads to sniff the content type.
		w.Header().Set("Content-Length", strconv.FormatInt(info.Size(), 10))
		io.Copy(w, f)
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	fmt.Printf("LISTENING %s\n", ln.Addr())
	fmt.Fprintln(os.Stderr, "serve:", http.Serve(ln, mux))
	os.Exit(1)
}

// Command h2cserver is TestL7H2C's upstream: HTTP/1.1 and HTTP/2 cleartext
// (prior knowledge) on :80, answering every request with 200 and a line
// naming its protocol and path. The test builds it static and runs it in a
// busybox container.
package main

import (
	"fmt"
	"log"
	"net/http"
)

func main() {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Addr: ":80", Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s\n", r.Proto, r.URL.Path)
	})}
	log.Fatal(srv.ListenAndServe())
}

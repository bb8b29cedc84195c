// Command etcd is the etcd server, identical to go.etcd.io/etcd/server/v3's own
// main package; this wrapper only exists so `go build -o DIR` names it "etcd".
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}

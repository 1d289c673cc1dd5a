package bpf

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// The host settings the L7 redirect needs besides the programs and the
// proxy's policy routing (proxy.DefaultRouting), found on Docker's
// published ports, where a client's packets are DNATed to the container:
//
//   - The redirected packets enter the stack a second time (at the bridge).
//     Tracked again, they would clash with the DNAT conntrack entry, whose
//     reply tuple the proxy's socket shares, and NAT would move their source
//     port. Untracked (nftables table "membrane_l7": notrack for the to-proxy
//     mark), the proxy's replies match the DNAT entry and are un-NATed.
//   - TCP early demux: after DNAT, the client's later packets carry the
//     tuple of the proxy's accepted socket, so early demux attaches that
//     socket to them in PREROUTING, and ip_forward drops any packet with a
//     socket before it reaches the container, where it would be redirected.
//     net.ipv4.tcp_early_demux=0 (covers IPv6 TCP too).
const proxyPathTable = "membrane_l7"

const proxyPathRules = `table inet membrane_l7 {
	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
		meta mark & 0xff000000 == 0xb6000000 notrack
	}
}
`

// PrepareProxyPath installs the host settings of the L7 path in the
// current network namespace (see above). Idempotent; RemoveProxyPath (for
// --cleanup) takes the nftables table away. Needs the nft binary.
func PrepareProxyPath() error {
	nft, err := exec.LookPath("nft")
	if err != nil {
		return fmt.Errorf("L7 path: nft not found (package nftables): %w", err)
	}
	// Replace, not add: "delete" of a missing table fails, so flush first
	// by (re)declaring it, then delete and create in one transaction.
	script := "table inet " + proxyPathTable + "\ndelete table inet " + proxyPathTable + "\n" + proxyPathRules
	cmd := exec.Command(nft, "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("L7 path: nft: %v: %s", err, bytes.TrimSpace(out))
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/tcp_early_demux", []byte("0\n"), 0o644); err != nil {
		return fmt.Errorf("L7 path: net.ipv4.tcp_early_demux=0: %w", err)
	}
	return nil
}

// RemoveProxyPath deletes the nftables table PrepareProxyPath made; a
// missing table is not an error. tcp_early_demux is left as it is: the
// original value is unknown, and 0 costs only a little speed.
func RemoveProxyPath() error {
	nft, err := exec.LookPath("nft")
	if err != nil {
		return nil // no nft, so no table of ours either
	}
	cmd := exec.Command(nft, "-f", "-")
	cmd.Stdin = strings.NewReader("table inet " + proxyPathTable + "\ndelete table inet " + proxyPathTable + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("L7 path: removing nftables table %s: %v: %s", proxyPathTable, err, bytes.TrimSpace(out))
	}
	return nil
}

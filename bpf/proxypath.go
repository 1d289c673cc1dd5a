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
//   - A connection the proxy refuses because Docker isolates its ends
//     (proxy.MarkRefused, the refused mark) is answered from the address of
//     a container on another network; tracked, Docker's MASQUERADE rule for
//     that network's subnet would rewrite it on the way out of the client's
//     bridge, and the client would never see the refusal. Untracked too
//     (the output chain), but only from a socket in the proxy's cgroup:
//     SO_MARK takes only CAP_NET_RAW (Linux 5.17 and later), so any host
//     process with it (a --network host container) could otherwise mark
//     its own packets and send them past conntrack, and so past NAT and
//     every `ct state` rule of the host's firewall. Without a cgroup of
//     the proxy's own (Cgroup's zero value) the rule trusts the mark from
//     any socket, as the datapath does with Config.ProxyCgroup 0.
//
// The prerouting chain cannot ask for a cgroup: its packets come from the
// datapath and have no socket. It leaves out what comes in on lo, where the
// datapath's never do (they come in on a bridge): a local process with
// CAP_NET_RAW marks its own packets there. Those of its sockets pass
// OUTPUT first, where conntrack takes them (loopback keeps that entry, and
// notrack leaves a tracked packet alone), but a packet socket skips OUTPUT
// and its frames carry its SO_MARK. A mark set in a container's namespace
// is scrubbed on the veth into the host.
const proxyPathTable = "membrane_l7"

// earlyDemux is the sysctl PrepareProxyPath turns off. The value it had
// before is kept in the comment of our nftables table, which lives exactly
// as long as the setting is ours, so that RemoveProxyPath can put it back
// (and a restarted daemon does not mistake its own 0 for the host's).
const earlyDemux = "/proc/sys/net/ipv4/tcp_early_demux"

// refusedMatch is the output chain's match for the refused mark: from the
// proxy's cgroup when it is known.
func refusedMatch(proxy Cgroup) string {
	m := "meta mark == 0xb9000001"
	if proxy.Level > 0 {
		m += fmt.Sprintf(` socket cgroupv2 level %d "%s"`, proxy.Level, proxy.Path)
	}
	return m
}

func proxyPathRules(demux string, proxy Cgroup) string {
	return `table inet membrane_l7 {
	comment "membrane L7 path; tcp_early_demux was ` + demux + `"
	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
		meta mark & 0xff000000 == 0xb6000000 iifname != "lo" notrack
	}
	chain output {
		type filter hook output priority raw; policy accept;
		` + refusedMatch(proxy) + ` notrack
	}
}
`
}

// savedEarlyDemux is the tcp_early_demux value recorded in our table's
// comment ("" when the table or the record is missing).
func savedEarlyDemux(nft string) string {
	out, err := exec.Command(nft, "list", "table", "inet", proxyPathTable).Output()
	if err != nil {
		return ""
	}
	_, rest, ok := strings.Cut(string(out), "tcp_early_demux was ")
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	if v != "0" && v != "1" {
		return ""
	}
	return v
}

// PrepareProxyPath installs the host settings of the L7 path in the
// current network namespace (see above); proxy is the cgroup of the
// process whose sockets carry the refused mark (SelfCgroup; the zero value
// when it has none). Idempotent, and a later call replaces the rules of an
// earlier one (a restarted daemon's cgroup is a new directory);
// RemoveProxyPath (for --cleanup) takes them away again. Needs the nft
// binary; with a proxy cgroup, also an nft and a kernel that take
// `socket cgroupv2` in the output hook (where they do not, the error says
// so and the caller may go on with the zero Cgroup).
func PrepareProxyPath(proxy Cgroup) error {
	nft, err := exec.LookPath("nft")
	if err != nil {
		return fmt.Errorf("L7 path: nft not found (package nftables): %w", err)
	}
	was := savedEarlyDemux(nft)
	if was == "" {
		b, err := os.ReadFile(earlyDemux)
		if err != nil {
			return fmt.Errorf("L7 path: reading net.ipv4.tcp_early_demux: %w", err)
		}
		was = strings.TrimSpace(string(b))
		if was != "0" && was != "1" {
			return fmt.Errorf("L7 path: net.ipv4.tcp_early_demux is %q, want 0 or 1", was)
		}
	}
	// Replace, not add: "delete" of a missing table fails, so flush first
	// by (re)declaring it, then delete and create in one transaction.
	script := "table inet " + proxyPathTable + "\ndelete table inet " + proxyPathTable + "\n" + proxyPathRules(was, proxy)
	cmd := exec.Command(nft, "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("L7 path: nft: %v: %s", err, bytes.TrimSpace(out))
	}
	if err := os.WriteFile(earlyDemux, []byte("0\n"), 0o644); err != nil {
		return fmt.Errorf("L7 path: net.ipv4.tcp_early_demux=0: %w", err)
	}
	return nil
}

// RemoveProxyPath puts tcp_early_demux back to the value PrepareProxyPath
// recorded and deletes the nftables table; a missing table is not an error
// (and leaves the sysctl alone).
func RemoveProxyPath() error {
	nft, err := exec.LookPath("nft")
	if err != nil {
		return nil // no nft, so no table of ours either
	}
	if was := savedEarlyDemux(nft); was != "" {
		if err := os.WriteFile(earlyDemux, []byte(was+"\n"), 0o644); err != nil {
			return fmt.Errorf("L7 path: restoring net.ipv4.tcp_early_demux=%s: %w", was, err)
		}
	}
	cmd := exec.Command(nft, "-f", "-")
	cmd.Stdin = strings.NewReader("table inet " + proxyPathTable + "\ndelete table inet " + proxyPathTable + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("L7 path: removing nftables table %s: %v: %s", proxyPathTable, err, bytes.TrimSpace(out))
	}
	return nil
}

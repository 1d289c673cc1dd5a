package nsinfo

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/runtime/endpoint"
)

// ErrGone is returned when the namespace file no longer exists (the
// container stopped between the runtime's answer and our look).
var ErrGone = errors.New("network namespace is gone")

// Info is what Inspect found.
type Info struct {
	Netns endpoint.Netns
	// Host is true when the namespace is the daemon's own (Docker's
	// network_mode host, or a containerd container without its own netns).
	Host       bool
	Interfaces []endpoint.Interface // loopback excluded, sorted by name
	// Unpaired describes the interfaces that lead out of the namespace
	// (IFLA_LINK) other than through a veth whose peer is in the daemon's
	// namespace, and why: a macvlan or ipvlan on a host device, a veth to
	// some other namespace, or a veth caught while it is being set up or
	// torn down (callers may look again a little later). No program on a
	// host-side veth sees what crosses them. A link whose peer or lower
	// device is in the same namespace (a veth pair, a macvlan on eth0)
	// leads nowhere new and is not among them.
	Unpaired []string
}

// Inode returns the inode of the namespace file at path.
func Inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("%s: %w", path, ErrGone)
		}
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// SelfInode is the inode of the daemon's own network namespace.
func SelfInode() (uint64, error) { return Inode("/proc/self/ns/net") }

// PidPath is the /proc path of a process's network namespace.
func PidPath(pid int) string { return "/proc/" + strconv.Itoa(pid) + "/ns/net" }

// Inspect opens the namespace at path and reads its interfaces.
func Inspect(path string) (Info, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Info{}, fmt.Errorf("%s: %w", path, ErrGone)
		}
		return Info{}, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Info{}, fmt.Errorf("stat netns %s: %w", path, err)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err == nil && sfs.Type != unix.NSFS_MAGIC && sfs.Type != unix.PROC_SUPER_MAGIC {
		// A bind-mount target whose namespace was unmounted is a plain
		// empty file: the namespace is gone.
		return Info{}, fmt.Errorf("%s is not a namespace file: %w", path, ErrGone)
	}
	info := Info{Netns: endpoint.Netns{Path: path, Inode: st.Ino}}
	self, err := SelfInode()
	if err != nil {
		return Info{}, err
	}
	if st.Ino == self {
		info.Host = true
		return info, nil
	}

	h, err := netlink.NewHandleAt(netns.NsHandle(f.Fd()))
	if err != nil {
		return Info{}, fmt.Errorf("netlink in netns %s: %w", path, err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return Info{}, fmt.Errorf("list links in netns %s: %w", path, err)
	}
	// Listing the links made the kernel allocate netnsids for every peer
	// namespace, so the daemon's own namespace has one now if any veth leads
	// to it.
	selfNs, err := os.Open("/proc/self/ns/net")
	if err != nil {
		return Info{}, err
	}
	hostID, err := h.GetNetNsIdByFd(int(selfNs.Fd()))
	selfNs.Close()
	if err != nil {
		return Info{}, fmt.Errorf("netnsid of the host namespace as seen from %s: %w", path, err)
	}
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || a.EncapType == "loopback" {
			continue
		}
		itf := endpoint.Interface{Name: a.Name, Ifindex: a.Index}
		if len(a.HardwareAddr) > 0 {
			itf.MAC = append(itf.MAC, a.HardwareAddr...)
		}
		// A link whose peer or lower device is in this namespace
		// (no IFLA_LINK_NETNSID) leads nowhere a program would not see.
		if a.ParentIndex != 0 && a.NetNsID >= 0 {
			peer, err := netlink.LinkByIndex(a.ParentIndex)
			switch {
			case hostID < 0 || a.NetNsID != hostID:
				info.Unpaired = append(info.Unpaired, fmt.Sprintf("%s (%s): peer %d in netnsid %d, the host is %d", a.Name, l.Type(), a.ParentIndex, a.NetNsID, hostID))
			case err != nil:
				info.Unpaired = append(info.Unpaired, fmt.Sprintf("%s (%s): host link %d: %v", a.Name, l.Type(), a.ParentIndex, err))
			case l.Type() != "veth":
				info.Unpaired = append(info.Unpaired, fmt.Sprintf("%s (%s on host device %s): not a veth", a.Name, l.Type(), peer.Attrs().Name))
			case peer.Attrs().ParentIndex != a.Index:
				info.Unpaired = append(info.Unpaired, fmt.Sprintf("%s (%s): host link %d (%s) points at %d, not %d", a.Name, l.Type(), a.ParentIndex, peer.Attrs().Name, peer.Attrs().ParentIndex, a.Index))
			default:
				itf.HostIfindex = peer.Attrs().Index
				itf.HostName = peer.Attrs().Name
				if m := peer.Attrs().MasterIndex; m != 0 {
					if ml, err := netlink.LinkByIndex(m); err == nil {
						itf.Bridge = ml.Attrs().Name
					}
				}
			}
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return Info{}, fmt.Errorf("addresses of %s in netns %s: %w", a.Name, path, err)
		}
		for _, ad := range addrs {
			ip, ok := netip.AddrFromSlice(ad.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if ip.Is6() && ip.IsLinkLocalUnicast() {
				continue
			}
			ones, _ := ad.Mask.Size()
			itf.Addrs = append(itf.Addrs, netip.PrefixFrom(ip, ones))
		}
		sort.Slice(itf.Addrs, func(i, j int) bool { return itf.Addrs[i].Addr().Less(itf.Addrs[j].Addr()) })
		info.Interfaces = append(info.Interfaces, itf)
	}
	sort.Slice(info.Interfaces, func(i, j int) bool { return info.Interfaces[i].Name < info.Interfaces[j].Name })
	return info, nil
}

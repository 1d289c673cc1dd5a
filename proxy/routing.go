package proxy

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Routing is the policy routing that delivers redirected packets to the
// local stack: a rule `fwmark Mark/Mask lookup Table` at Priority, and in
// Table a `local default dev lo` route, for IPv4 and IPv6. The datapath's
// bpf_sk_assign has already picked the socket; this route is what makes the
// stack deliver a packet addressed to another host locally.
type Routing struct {
	Mark     uint32
	Mask     uint32
	Table    int
	Priority int
}

// DefaultRouting is the daemon's routing: the to-proxy magic of mark.go, table
// 2005, rule priority 9000 (before the main table's 32766).
var DefaultRouting = Routing{Mark: MarkMagicToProxy, Mask: MarkMagicMask, Table: 2005, Priority: 9000}

var families = []int{unix.AF_INET, unix.AF_INET6}

func (rt Routing) rule(family int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Mark = rt.Mark
	m := rt.Mask
	r.Mask = &m
	r.Table = rt.Table
	r.Priority = rt.Priority
	return r
}

func (rt Routing) route(family int, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	if family == unix.AF_INET6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		LinkIndex: lo,
		Dst:       dst,
		Table:     rt.Table,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Family:    family,
	}
}

// Install adds the rules and routes unless present; running it again changes
// nothing. h selects the network namespace (nil: the current one).
func (rt Routing) Install(h *netlink.Handle) error {
	if h == nil {
		h = &netlink.Handle{}
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("proxy routing: loopback: %w", err)
	}
	for _, fam := range families {
		if err := h.RouteReplace(rt.route(fam, lo.Attrs().Index)); err != nil {
			if fam == unix.AF_INET6 && ipv6Disabled(err) {
				continue
			}
			return fmt.Errorf("proxy routing: local default route in table %d (%s): %w", rt.Table, famName(fam), err)
		}
		ok, err := rt.hasRule(h, fam)
		if err != nil {
			return err
		}
		if ok {
			continue
		}
		if err := h.RuleAdd(rt.rule(fam)); err != nil && !errors.Is(err, unix.EEXIST) {
			if fam == unix.AF_INET6 && ipv6Disabled(err) {
				continue
			}
			return fmt.Errorf("proxy routing: rule fwmark %#x/%#x lookup %d (%s): %w", rt.Mark, rt.Mask, rt.Table, famName(fam), err)
		}
	}
	return nil
}

// Remove deletes the rules and the table's routes Install made; what is
// already gone is not an error.
func (rt Routing) Remove(h *netlink.Handle) error {
	if h == nil {
		h = &netlink.Handle{}
	}
	var errs []error
	for _, fam := range families {
		for {
			// A listing that fails leaves the rule's presence unknown:
			// reported, so that a cleanup that may have left the rule
			// behind does not pass for one that removed it.
			ok, err := rt.hasRule(h, fam)
			if err != nil {
				errs = append(errs, fmt.Errorf("%w (%s)", err, famName(fam)))
				break
			}
			if !ok {
				break
			}
			if err := h.RuleDel(rt.rule(fam)); err != nil {
				errs = append(errs, fmt.Errorf("proxy routing: delete rule (%s): %w", famName(fam), err))
				break
			}
		}
		routes, err := h.RouteListFiltered(fam, &netlink.Route{Table: rt.Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			if !ipv6Disabled(err) {
				errs = append(errs, fmt.Errorf("proxy routing: list routes in table %d (%s): %w", rt.Table, famName(fam), err))
			}
			continue
		}
		for i := range routes {
			if err := h.RouteDel(&routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("proxy routing: delete route in table %d: %w", rt.Table, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Installed reports whether both the IPv4 rule and route are in place.
func (rt Routing) Installed(h *netlink.Handle) (bool, error) {
	if h == nil {
		h = &netlink.Handle{}
	}
	ok, err := rt.hasRule(h, unix.AF_INET)
	if err != nil || !ok {
		return false, err
	}
	routes, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: rt.Table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return false, fmt.Errorf("proxy routing: list routes in table %d (IPv4): %w", rt.Table, err)
	}
	return len(routes) > 0, nil
}

func (rt Routing) hasRule(h *netlink.Handle, fam int) (bool, error) {
	rules, err := h.RuleListFiltered(fam, &netlink.Rule{Table: rt.Table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		if fam == unix.AF_INET6 && ipv6Disabled(err) {
			return false, nil
		}
		return false, fmt.Errorf("proxy routing: list rules: %w", err)
	}
	for _, r := range rules {
		if r.Mark == rt.Mark && r.Mask != nil && *r.Mask == rt.Mask && r.Priority == rt.Priority {
			return true, nil
		}
	}
	return false, nil
}

func ipv6Disabled(err error) bool {
	return errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EPROTONOSUPPORT)
}

func famName(f int) string {
	if f == unix.AF_INET6 {
		return "IPv6"
	}
	return "IPv4"
}

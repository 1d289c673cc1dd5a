package endpoint

import (
	"slices"
	"time"
)

// Percentile returns the p-th percentile (0..100, nearest rank) of ds; the
// benchmarks of the runtime packages report latencies with it.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(p/100*float64(len(s))+0.999999) - 1
	return s[min(max(rank, 0), len(s)-1)]
}

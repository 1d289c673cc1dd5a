package main

import (
	"encoding/json"
	"io"
)

// jsonLine writes v as one line of JSON (observe -o json streams NDJSON).
func jsonLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

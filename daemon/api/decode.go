package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
)

// maxBody bounds a request body; requests are small JSON objects.
const maxBody = 1 << 20

var errEmptyBody = errors.New("the body is empty: want one JSON object")

// decodeBody reads r's body as exactly one JSON object into v, with no
// unknown field and nothing after it. Its errors say where in the body
// the problem is (a byte offset, or the field).
//
// encoding/json alone would take {"Port": 80} for "port" (it matches
// names case-insensitively) and the last of two equal keys; keysOnce
// refuses both before the body is decoded, so what a request asks is
// never half-taken.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	var raw json.RawMessage
	err := dec.Decode(&raw)
	var (
		syn     *json.SyntaxError
		big     *http.MaxBytesError
		timeout net.Error
	)
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		return errEmptyBody
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("the body ends at byte %d inside its JSON object", dec.InputOffset())
	case errors.As(err, &syn):
		return fmt.Errorf("invalid JSON at byte %d: %v", syn.Offset, err)
	case errors.As(err, &big):
		return fmt.Errorf("the body is over %d bytes", big.Limit)
	case errors.As(err, &timeout) && timeout.Timeout():
		return fmt.Errorf("the body did not arrive within %s", readTimeout)
	default:
		return fmt.Errorf("%w (at byte %d)", err, dec.InputOffset())
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("unexpected data after the JSON object, which ends at byte %d: send one object", end)
	}
	// Offsets below count from the body's first byte, as those above do.
	base := end - int64(len(raw))
	if raw[0] == '{' {
		if err := keysOnce(raw, base, reflect.TypeOf(v)); err != nil {
			return err
		}
	}
	inner := json.NewDecoder(bytes.NewReader(raw))
	inner.DisallowUnknownFields()
	var typ *json.UnmarshalTypeError
	switch err := inner.Decode(v); {
	case err == nil:
		return nil
	case errors.As(err, &typ) && typ.Field == "":
		return fmt.Errorf("JSON %s at byte %d: want one JSON object", typ.Value, base+typ.Offset)
	case errors.As(err, &typ):
		return fmt.Errorf("field %q (byte %d): JSON %s does not fit %s", typ.Field, base+typ.Offset, typ.Value, typ.Type)
	default:
		return fmt.Errorf("%w (at byte %d)", err, base+inner.InputOffset())
	}
}

// keysOnce walks the JSON value raw (valid JSON, at offset base of the
// body) against Go type t and refuses an object key given twice and a
// struct field named in another case than its json name, or not at all.
// A map field tagged `api:"fold"` (HTTP header names) refuses two keys
// that differ only in case too. Positions are 1-based byte numbers of
// the key's opening quote.
func keysOnce(raw []byte, base int64, t reflect.Type) error {
	w := keyWalker{raw: raw, base: base, dec: json.NewDecoder(bytes.NewReader(raw))}
	w.dec.UseNumber()
	return w.value(t, "", false)
}

type keyWalker struct {
	raw  []byte
	base int64
	dec  *json.Decoder
}

// next reads a token and the 1-based body position of its first byte.
func (w *keyWalker) next() (json.Token, int64, error) {
	at := w.dec.InputOffset()
	for at < int64(len(w.raw)) && bytes.IndexByte([]byte(" \t\r\n,:"), w.raw[at]) >= 0 {
		at++
	}
	tok, err := w.dec.Token()
	return tok, w.base + at + 1, err
}

func (w *keyWalker) value(t reflect.Type, path string, fold bool) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tok, _, err := w.next()
	if err != nil {
		return err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for w.dec.More() {
			if err := w.value(elem, path, false); err != nil {
				return err
			}
		}
		_, _, err := w.next()
		return err
	case '{':
		if t != nil && t.Kind() != reflect.Struct && t.Kind() != reflect.Map {
			// A type error: decoding names it.
			t = nil
		}
		var fields map[string]reflect.StructField
		if t != nil && t.Kind() == reflect.Struct {
			fields = jsonFields(t)
		}
		seen := map[string]int64{}
		for w.dec.More() {
			tok, at, err := w.next()
			if err != nil {
				return err
			}
			key := tok.(string)
			var (
				sub     reflect.Type
				subFold bool
			)
			switch {
			case fields != nil:
				f, ok := fields[key]
				if !ok {
					return unknownField(key, at, fields)
				}
				sub, subFold = f.Type, f.Tag.Get("api") == "fold"
			case t != nil:
				sub = t.Elem()
			}
			id := key
			if fold {
				id = strings.ToLower(key)
			}
			if first, ok := seen[id]; ok {
				what := "field"
				if fields == nil {
					what = path + ": key"
				}
				if fold {
					if prev := w.keyAt(first); prev != key {
						return fmt.Errorf("%s %q (byte %d) names the same header as %q (byte %d): header names are case-insensitive; join the values with \",\" in one", what, key, at, prev, first)
					}
				}
				return fmt.Errorf("%s %q (byte %d) is given twice: first at byte %d; give it once", what, key, at, first)
			}
			seen[id] = at
			name := key
			if path != "" {
				name = path + "." + key
			}
			if err := w.value(sub, name, subFold); err != nil {
				return err
			}
		}
		_, _, err := w.next()
		return err
	}
	return nil
}

// keyAt is the key whose opening quote is at 1-based body position at.
func (w *keyWalker) keyAt(at int64) string {
	var k string
	_ = json.NewDecoder(bytes.NewReader(w.raw[at-1-w.base:])).Decode(&k)
	return k
}

// jsonFields maps a struct's JSON field names to its fields.
func jsonFields(t reflect.Type) map[string]reflect.StructField {
	fields := map[string]reflect.StructField{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f
	}
	return fields
}

func unknownField(key string, at int64, fields map[string]reflect.StructField) error {
	for name := range fields {
		if strings.EqualFold(name, key) {
			return fmt.Errorf("field %q (byte %d) is not known: field names are case-sensitive, did you mean %q?", key, at, name)
		}
	}
	if len(fields) == 0 {
		return fmt.Errorf("field %q (byte %d) is not known: this request takes no fields", key, at)
	}
	return fmt.Errorf("field %q (byte %d) is not known (known: %s)", key, at, strings.Join(slices.Sorted(maps.Keys(fields)), ", "))
}

// checkQuery refuses a query parameter the route does not know (known, in
// its exact spelling) or one given twice: an option of a request must
// never be dropped or picked among silently, least of all on a request
// that changes something.
func checkQuery(r *http.Request, known ...string) error {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return fmt.Errorf("query %q: %v", r.URL.RawQuery, err)
	}
	for _, k := range slices.Sorted(maps.Keys(q)) {
		if len(q[k]) > 1 {
			return fmt.Errorf("query parameter %q is given twice: give it once", k)
		}
		if slices.Contains(known, k) {
			continue
		}
		for _, n := range known {
			if strings.EqualFold(n, k) {
				return fmt.Errorf("query parameter %q is not known: parameter names are case-sensitive, did you mean %q?", k, n)
			}
		}
		if len(known) == 0 {
			return fmt.Errorf("query parameter %q is not known: %s takes none", k, r.URL.Path)
		}
		return fmt.Errorf("query parameter %q is not known (known: %s)", k, strings.Join(slices.Sorted(slices.Values(known)), ", "))
	}
	return nil
}

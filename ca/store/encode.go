package store

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// EncodeIssuance checks rec (CheckIssuance) and returns its JSON
// (AppendIssuanceJSON), refusing a record of more than MaxIssuanceLen
// bytes: what every Store does first in RecordIssuance and
// RecordIssuanceOnce, so that a record one backend accepts, all accept.
func EncodeIssuance(rec *Issuance) ([]byte, error) {
	if err := CheckIssuance(rec); err != nil {
		return nil, err
	}
	b, err := AppendIssuanceJSON(make([]byte, 0, 512), rec)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxIssuanceLen {
		return nil, fmt.Errorf("record of %d bytes, more than %d", len(b), MaxIssuanceLen)
	}
	return b, nil
}

// AppendIssuanceJSON appends rec as JSON, byte for byte what
// json.Marshal(rec) returns (FuzzAppendIssuanceJSON checks it), at a
// fraction of the cost: the stores encode each record once, on the
// caller's goroutine (boltstore: the same bytes go to the journal and then,
// unchanged, to the data file, whose format they are; pgstore: the json
// column).
func AppendIssuanceJSON(b []byte, rec *Issuance) ([]byte, error) {
	var err error
	b = append(b, `{"serial":`...)
	b = appendString(b, rec.Serial)
	b = append(b, `,"spiffe_id":`...)
	b = appendString(b, rec.SPIFFEID)
	b = append(b, `,"not_before":`...)
	if b, err = appendTime(b, rec.NotBefore); err != nil {
		return nil, err
	}
	b = append(b, `,"not_after":`...)
	if b, err = appendTime(b, rec.NotAfter); err != nil {
		return nil, err
	}
	b = append(b, `,"public_key_sha256":`...)
	b = appendString(b, rec.PublicKeySHA256)
	b = append(b, `,"credential_kind":`...)
	b = appendString(b, rec.CredentialKind)
	if rec.Requester != "" {
		b = append(b, `,"requester":`...)
		b = appendString(b, rec.Requester)
	}
	if rec.Peer != "" {
		b = append(b, `,"peer":`...)
		b = appendString(b, rec.Peer)
	}
	b = append(b, `,"issued_at":`...)
	if b, err = appendTime(b, rec.IssuedAt); err != nil {
		return nil, err
	}
	if len(rec.Details) > 0 {
		b = append(b, `,"details":{`...)
		keys := make([]string, 0, len(rec.Details))
		for k := range rec.Details {
			keys = append(keys, k)
		}
		slices.Sort(keys) // as encoding/json orders map keys
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, rec.Details[k])
		}
		b = append(b, '}')
	}
	return append(b, '}'), nil
}

// appendTime appends t as time.Time.MarshalJSON does: RFC 3339 with
// nanoseconds, refusing what RFC 3339 cannot represent.
func appendTime(b []byte, t time.Time) ([]byte, error) {
	b = append(b, '"')
	b, err := t.AppendText(b) // what MarshalJSON writes between its quotes
	if err != nil {
		return nil, err
	}
	return append(b, '"'), nil
}

// appendString appends s as a JSON string. Strings of printable ASCII
// that encoding/json leaves as they are (no quote, backslash or HTML
// character) are copied; anything else is left to encoding/json, so that
// escaping and the replacement of invalid UTF-8 stay exactly its own.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

package policy

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzDecodeRequest reads arbitrary bytes as a `meshca audit authz`
// request and checks that what DecodeRequest accepts round-trips (encoded
// and decoded again it is the same request, and Validate judges both
// alike), and that a request Validate accepts is judged by Authorize
// without panicking and the same way twice, against the policies of the
// authorization cases.
func FuzzDecodeRequest(f *testing.F) {
	var sets []*Set
	for _, tc := range authzCases() {
		if s, err := Parse("case.yaml", []byte(tc.policies)); err == nil && len(sets) < 25 {
			sets = append(sets, s)
		}
	}
	for _, r := range []Request{baseRequest(), with(jwt), with(tcp, plaintext), {}} {
		b, err := json.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"workload":{"namespace":"foo"},"custom_verdicts":{"ext":"ALLOW"},"destination":{"port":4294967295}}`))
	f.Add([]byte(`{"workload":{"namespace":"foo"},"request":{"claims":{"a":[1,{"b":null}],"\ud800":"\xff"}}}`))
	f.Add([]byte(`{"protocol":"udp"} trailing`))
	f.Add([]byte(`{"workload":{"namespace":"foo"},"source":{"ip":"::ffff:10.0.0.1%eth0"}}`))
	f.Add([]byte(`{"workloads":{}}`))
	f.Add([]byte(`{"protocol":"TCP","workload":{"namespace":"foo"},"filter_metadata":{"envoy.filters.network.mysql_proxy":{"db.table":["update",1,null]},"x":{}}}`))
	f.Add([]byte(`{"workload":{"namespace":"foo"},"request":{"path":"/public/%2e%2e/admin%00"},"filter_metadata":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeRequest(bytes.NewReader(data))
		if err != nil {
			return
		}
		enc, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("decoded request does not encode: %v", err)
		}
		again, err := DecodeRequest(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("re-decoding %s: %v", enc, err)
		}
		if !reflect.DeepEqual(req, again) {
			t.Fatalf("round trip changed the request:\n%#v\n%#v", req, again)
		}
		verr := req.Validate()
		if (verr == nil) != (again.Validate() == nil) {
			t.Fatalf("Validate differs after a round trip: %v", verr)
		}
		if verr != nil {
			return
		}
		for _, s := range sets {
			if d1, d2 := s.Authorize(req), s.Authorize(again); d1 != d2 {
				t.Fatalf("Authorize judged the same request twice differently: %+v, %+v", d1, d2)
			}
		}
	})
}

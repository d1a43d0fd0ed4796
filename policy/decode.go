package policy

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// locateDecodeError walks spec (JSON) against the message descriptor and
// reports what the CRD schema would refuse although protojson accepts it
// (snake_case names, numeric enums), and
// returns the field path and reason of the first unknown field or value of
// the wrong type, so that a protojson failure can name where it happened.
// protojson itself reports only a byte offset. It returns "" when it finds
// nothing, and the caller falls back to protojson's message.
func locateDecodeError(md protoreflect.MessageDescriptor, spec []byte) (path, why string) {
	var v any
	if err := json.Unmarshal(spec, &v); err != nil {
		return "spec", err.Error()
	}
	return walkMessage(md, v, "spec")
}

func walkMessage(md protoreflect.MessageDescriptor, v any, path string) (string, string) {
	if v == nil {
		return "", ""
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return path, fmt.Sprintf("expected an object, got %s", jsonType(v))
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		// Only the camelCase names the CRD schema has: protojson would also
		// take snake_case, which the API server would reject or prune.
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			if alt := md.Fields().ByTextName(k); alt != nil {
				return path + "." + k, fmt.Sprintf("unknown field %q (did you mean %q?)", k, alt.JSONName())
			}
			return path + "." + k, fmt.Sprintf("unknown field %q", k)
		}
		fp := path + "." + k
		val := obj[k]
		if val == nil {
			continue
		}
		switch {
		case fd.IsMap():
			m, ok := val.(map[string]any)
			if !ok {
				return fp, fmt.Sprintf("expected an object, got %s", jsonType(val))
			}
			mk := make([]string, 0, len(m))
			for k := range m {
				mk = append(mk, k)
			}
			sort.Strings(mk)
			for _, k := range mk {
				if p, w := walkValue(fd.MapValue(), m[k], fp+"["+k+"]"); p != "" {
					return p, w
				}
			}
		case fd.IsList():
			l, ok := val.([]any)
			if !ok {
				return fp, fmt.Sprintf("expected a list, got %s", jsonType(val))
			}
			for i, e := range l {
				if p, w := walkValue(fd, e, fp+"["+strconv.Itoa(i)+"]"); p != "" {
					return p, w
				}
			}
		default:
			if p, w := walkValue(fd, val, fp); p != "" {
				return p, w
			}
		}
	}
	return "", ""
}

func walkValue(fd protoreflect.FieldDescriptor, v any, path string) (string, string) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return walkMessage(fd.Message(), v, path)
	case protoreflect.StringKind, protoreflect.BytesKind:
		if _, ok := v.(string); !ok {
			return path, fmt.Sprintf("expected a string, got %s", jsonType(v))
		}
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			return path, fmt.Sprintf("expected a boolean, got %s", jsonType(v))
		}
	case protoreflect.EnumKind:
		s, ok := v.(string)
		if !ok {
			// The CRD schema allows only the names; a number would also
			// let undefined values through.
			return path, fmt.Sprintf("expected an enum name, got %s", jsonType(v))
		}
		if fd.Enum().Values().ByName(protoreflect.Name(s)) == nil {
			return path, fmt.Sprintf("unknown value %q", s)
		}
	default: // numbers
		switch v.(type) {
		case float64, string:
		default:
			return path, fmt.Sprintf("expected a number, got %s", jsonType(v))
		}
	}
	return "", ""
}

func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

package bpf

import (
	"fmt"
	"maps"
	"sync"

	"github.com/cilium/ebpf/btf"
)

// KernelEnums returns the C enums that icapwatch.h shares with user space
// (event_type, event_flag, direction, hook, phase, counter) as the
// compiled baseline object's BTF has them: by enum, then by enumerator,
// the value. KernelEnums()["event_type"]["EV_ANSWER"] is 3.
//
// The enums are those of struct exported_types, the type that puts them
// into the object's BTF. The agent's test holds agent/observe's names to
// these values, and bpf's tests name kernel values through them.
func KernelEnums() (map[string]map[string]uint64, error) {
	enums, err := kernelEnums()
	if err != nil {
		return nil, err
	}
	out := make(map[string]map[string]uint64, len(enums))
	for name, values := range enums {
		out[name] = maps.Clone(values)
	}
	return out, nil
}

// kernelEnums reads the object once: parsing it takes milliseconds.
var kernelEnums = sync.OnceValues(func() (map[string]map[string]uint64, error) {
	spec, err := loadIcapwatch()
	if err != nil {
		return nil, fmt.Errorf("read embedded eBPF object: %w", err)
	}
	var exported *btf.Struct
	if err := spec.Types.TypeByName("exported_types", &exported); err != nil {
		return nil, fmt.Errorf("object BTF: %w", err)
	}
	out := map[string]map[string]uint64{}
	for _, m := range exported.Members {
		e, ok := btf.UnderlyingType(m.Type).(*btf.Enum)
		if !ok {
			return nil, fmt.Errorf("object BTF: exported_types.%s is a %s, not an enum", m.Name, m.Type)
		}
		values := make(map[string]uint64, len(e.Values))
		for _, v := range e.Values {
			values[v.Name] = v.Value
		}
		out[e.Name] = values
	}
	return out, nil
})

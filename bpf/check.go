package bpf

// CheckItem is one thing `icapwatch check` looks at.
type CheckItem struct {
	Name     string `json:"name"`
	OK       bool   `json:"ok"`
	Optional bool   `json:"optional"`
	Detail   string `json:"detail"`
}

// Report is what the running kernel offers and whether the agent can run.
type Report struct {
	Kernel  string       `json:"kernel"`
	Items   []CheckItem  `json:"items"`
	Hooks   []HookStatus `json:"hooks"`
	Output  string       `json:"output,omitempty"` // perf or ringbuf
	CanRun  bool         `json:"can_run"`
	Reasons []string     `json:"reasons,omitempty"` // why not
}

func (r *Report) add(name string, ok, optional bool, detail string) {
	r.Items = append(r.Items, CheckItem{Name: name, OK: ok, Optional: optional, Detail: detail})
	if !ok && !optional {
		r.CanRun = false
		r.Reasons = append(r.Reasons, name+": "+detail)
	}
}

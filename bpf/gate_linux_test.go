package bpf

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/icapwatch/icapwatch/internal/testutil"
)

// The RHEL 8 gate: the committed baseline object must load on upstream
// 4.18. The limits below are that kernel's.
const (
	maxHelper4_18 = 80   // BPF_FUNC_get_stack_kern... up to 80 exist in 4.18's uapi bpf.h
	maxInsns4_18  = 4096 // BPF_MAXINSNS
	// BPF_COMPLEXITY_LIMIT_INSNS: the instructions 4.18's verifier walks
	// through all paths of a program before it gives up.
	maxWalk4_18 = 131072
)

var baselineMaps = map[ebpf.MapType]bool{
	ebpf.Hash: true, ebpf.LRUHash: true, ebpf.Array: true, ebpf.PerCPUArray: true,
	ebpf.PerCPUHash: true, ebpf.LRUCPUHash: true, ebpf.PerfEventArray: true,
}

// optionalPrograms load only where the kernel has what they need.
func optionalProgram(p *ebpf.ProgramSpec) bool {
	return p.Type == ebpf.Kprobe
}

// gateViolations lists what keeps spec from loading on 4.18.
func gateViolations(spec *ebpf.CollectionSpec) []string {
	var out []string
	for name, m := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			out = append(out, fmt.Sprintf("map %s: global data needs 5.2", name))
			continue
		}
		if !baselineMaps[m.Type] {
			out = append(out, fmt.Sprintf("map %s: type %s is not in the 4.18 baseline", name, m.Type))
		}
	}
	for name := range spec.Variables {
		out = append(out, fmt.Sprintf("variable %s: global data needs 5.2", name))
	}
	for name, p := range spec.Programs {
		if optionalProgram(p) {
			continue
		}
		if !strings.Contains(p.License, "GPL") {
			out = append(out, fmt.Sprintf("program %s: license %q is not GPL-compatible", name, p.License))
		}
		n, jmp32, firstJmp32 := 0, 0, 0
		for i, ins := range p.Instructions {
			n += int(ins.Size() / asm.InstructionSize)
			if ins.IsBuiltinCall() && ins.Constant > maxHelper4_18 {
				out = append(out, fmt.Sprintf("program %s: instruction %d calls helper %s (%d > %d)",
					name, i, asm.BuiltinFunc(ins.Constant), ins.Constant, maxHelper4_18))
			}
			// BPF_JMP32 (class 0x06) came in 5.1; clang emits it for
			// -mcpu=v3 and newer.
			if ins.OpCode.Class() == asm.Jump32Class {
				if jmp32 == 0 {
					firstJmp32 = i
				}
				jmp32++
			}
		}
		if jmp32 > 0 {
			out = append(out, fmt.Sprintf("program %s: %d BPF_JMP32 instructions, the first at %d (JMP32 needs 5.1)",
				name, jmp32, firstJmp32))
		}
		if from, to, ok := backEdge(p.Instructions); ok {
			out = append(out, fmt.Sprintf("program %s: back-edge from %d to %d (loops need 5.3)", name, from, to))
		}
		if n > maxInsns4_18 {
			out = append(out, fmt.Sprintf("program %s: %d instructions, more than %d", name, n, maxInsns4_18))
		}
	}
	return out
}

func TestBaselineObjectLoadsOn4_18(t *testing.T) {
	// loadSpec fails when a program or map the loader names is missing.
	spec, specs, err := loadSpec(OutputPerf)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range gateViolations(spec) {
		t.Error(v)
	}
	// Every hook the agent needs at baseline is in the object, as a
	// baseline program.
	for _, p := range []*ebpf.ProgramSpec{specs.IcapwatchIngress, specs.IcapwatchEgress,
		specs.IcapwatchState, specs.IcapwatchRetransmit} {
		if optionalProgram(p) {
			t.Errorf("baseline program %s is optional", p.Name)
		}
	}
}

// TestVerifierWalkLeavesRoomFor4_18 loads the baseline object through
// this kernel's verifier and reads how many instructions it walked for
// each program. 4.18's verifier prunes fewer paths than this one, so a
// program must stay well under its limit here: a quarter of it. The
// bound is a tripwire for a change that multiplies the paths (a branch
// on every packet byte, an unpruned lookup), which the instruction count
// alone does not show.
func TestVerifierWalkLeavesRoomFor4_18(t *testing.T) {
	testutil.RequireRoot(t)
	spec, _, err := loadSpec(OutputPerf)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		if m.MaxEntries > 1024 && m.Type != ebpf.PerfEventArray {
			m.MaxEntries = 1024 // the programs' paths do not depend on it
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	walked := regexp.MustCompile(`processed (\d+) insns`)
	for name, p := range coll.Programs {
		m := walked.FindStringSubmatch(p.VerifierLog)
		if m == nil {
			t.Errorf("program %s: no instruction count in the verifier's log:\n%s", name, p.VerifierLog)
			continue
		}
		n, _ := strconv.Atoi(m[1])
		t.Logf("program %s: the verifier walked %d instructions", name, n)
		if n > maxWalk4_18/4 {
			t.Errorf("program %s: the verifier walked %d instructions, more than a quarter of 4.18's %d",
				name, n, maxWalk4_18)
		}
	}
}

// backEdge finds a cycle in the control flow graph, as the 4.18 verifier's
// check_cfg does: a depth-first walk that meets an instruction still on
// its stack. Jumping backwards to code already explored is fine.
func backEdge(insns asm.Instructions) (from, to int, found bool) {
	// Raw slots: a 64-bit immediate load takes two.
	var raw []int // raw slot -> index into insns, -1 for a second half
	for i, ins := range insns {
		raw = append(raw, i)
		if ins.Size() > asm.InstructionSize {
			raw = append(raw, -1)
		}
	}
	succ := func(slot int) []int {
		ins := insns[raw[slot]]
		next := slot + int(ins.Size()/asm.InstructionSize)
		op := ins.OpCode
		if !op.Class().IsJump() {
			return []int{next}
		}
		switch op.JumpOp() {
		case asm.Exit:
			return nil
		case asm.Call:
			return []int{next}
		case asm.Ja:
			return []int{slot + 1 + int(ins.Offset)}
		}
		return []int{next, slot + 1 + int(ins.Offset)}
	}
	const (
		unseen = iota
		onStack
		done
	)
	state := make([]int, len(raw))
	type frame struct{ slot, next int }
	stack := []frame{{0, 0}}
	state[0] = onStack
	for len(stack) > 0 {
		top := &stack[len(stack)-1]
		edges := succ(top.slot)
		if top.next == len(edges) {
			state[top.slot] = done
			stack = stack[:len(stack)-1]
			continue
		}
		w := edges[top.next]
		top.next++
		if w < 0 || w >= len(raw) || raw[w] < 0 {
			return top.slot, w, true // out of range counts as fatal too
		}
		switch state[w] {
		case onStack:
			return top.slot, w, true
		case unseen:
			state[w] = onStack
			stack = append(stack, frame{w, 0})
		}
	}
	return 0, 0, false
}

// The ring buffer object differs from the baseline only by its output.
func TestRingbufObjectDiffersOnlyInOutput(t *testing.T) {
	spec, err := loadIcapwatchRingbuf()
	if err != nil {
		t.Fatal(err)
	}
	delete(spec.Maps, "exported_types")
	if spec.Maps["events"].Type != ebpf.RingBuf {
		t.Fatalf("events map is %s", spec.Maps["events"].Type)
	}
	for _, v := range gateViolations(spec) {
		if !strings.Contains(v, "map events:") && !strings.Contains(v, "helper "+asm.FnRingbufOutput.String()) {
			t.Error(v)
		}
	}
}

// The gate itself catches what it is there for.
func TestGateCatchesViolations(t *testing.T) {
	prog := &ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "Proprietary",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 0),
			asm.FnRingbufOutput.Call(),
			asm.JEq.Imm(asm.R0, 0, "x"),
			asm.JEq.Imm32(asm.R0, 0, "y"),
			asm.Return(),
		},
	}
	prog.Instructions[2].Offset = -3 // back to the first instruction: a loop
	prog.Instructions[3].Offset = 0  // a 32-bit jump to the next one
	for len(prog.Instructions) <= maxInsns4_18 {
		prog.Instructions = append(prog.Instructions, asm.Mov.Imm(asm.R0, 0))
	}
	spec := &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			".rodata": {Type: ebpf.Array},
			"rb":      {Type: ebpf.RingBuf},
		},
		Programs: map[string]*ebpf.ProgramSpec{"p": prog},
	}
	got := strings.Join(gateViolations(spec), "\n")
	for _, want := range []string{"global data", "type RingBuf", "not GPL", "helper", "back-edge",
		"instructions, more than", "1 BPF_JMP32 instructions, the first at 3"} {
		if !strings.Contains(got, want) {
			t.Errorf("gate did not report %q; it said:\n%s", want, got)
		}
	}
}

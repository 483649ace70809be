package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"reflect"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/rlimit"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// loadOptions are for tests.
type loadOptions struct {
	// verifyKprobes loads the kprobe programs even where the kernel has no
	// kprobes to attach them to (the program type exists wherever
	// tracepoint programs do), so the verifier checks them.
	verifyKprobes bool
	// edit changes each spec before it is loaded, to make a load fail.
	edit func(*ebpf.CollectionSpec, *icapwatchSpecs)
}

// Load loads the programs, configures them and opens the event buffer,
// and attaches nothing: Open is Load, then the hooks. The programs of a
// loaded probe see no traffic; a test hands frames to the classifier with
// RunClassifier.
func Load(cfg Config) (*Probe, error) {
	return loadWith(cfg, loadOptions{})
}

func loadWith(cfg Config, opts loadOptions) (p *Probe, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	p = &Probe{log: log}
	opened := p // the error returns below clear p
	defer func() {
		if err != nil {
			opened.Close()
		}
	}()

	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK. Without
	// CAP_SYS_RESOURCE the limit stays, which matters only if the load then
	// fails: the error says both.
	memlockErr := rlimit.RemoveMemlock()
	if memlockErr != nil {
		log.Debug("RLIMIT_MEMLOCK not raised", "error", memlockErr)
	}
	tfs, err := useTracefs(log)
	if err != nil {
		return nil, err
	}
	p.tracefs = tfs // until attached, or closed
	settings, missing, err := tracepointSettings(tfs.root)
	if err != nil {
		return nil, err
	}
	sendLength := haveSendLength(&settings)
	if why, ok := missing[HookSendLength]; ok {
		p.addHook(HookStatus{Name: HookSendLength, Optional: true, Error: why})
	}
	kernel := onceBTF()
	if why := netnsSettings(&settings, kernel); why != "" {
		// Flows are then told apart by their addresses alone, as before.
		log.Warn("sockets of other network namespaces are not told apart", "reason", why)
	}
	kprobes := cfg.Kprobes != KprobesOff
	if kprobes && !opts.verifyKprobes {
		if from, reason := kprobeSettings(&settings, kernel); reason != "" {
			kprobes = false
			p.addHook(HookStatus{Name: HookSendmsg, Optional: true, Error: reason})
			p.addHook(HookStatus{Name: HookCleanupRbuf, Optional: true, Error: reason})
		} else {
			log.Debug("kprobe struct offsets from the kernel's BTF", "path", from)
		}
	}

	output := cfg.Output
	if output == ModeAuto {
		output = OutputPerf
		if features.HaveMapType(ebpf.RingBuf) == nil {
			output = OutputRing
		}
	}
	// What to try, best first: an optional program or the ring buffer
	// that the kernel refuses costs the upgrade, not the agent. The
	// kprobes go first, then the optional tracepoint.
	type attempt struct {
		output              string
		kprobes, sendLength bool
	}
	outputs := []string{output}
	if output == OutputRing && cfg.Output == ModeAuto {
		outputs = append(outputs, OutputPerf)
	}
	var attempts []attempt
	for _, out := range outputs {
		attempts = append(attempts, attempt{out, kprobes, sendLength})
		if kprobes {
			attempts = append(attempts, attempt{out, false, sendLength})
		}
		if sendLength {
			attempts = append(attempts, attempt{out, false, false})
		}
	}
	var kprobeErr, sendLengthErr, ringErr error // the last of each variant's
	for _, try := range attempts {
		p.output = try.output
		p.objs, err = loadObjects(cfg, try.output, try.kprobes, try.sendLength, opts.edit)
		if err == nil {
			if try.kprobes != kprobes && kprobeErr != nil {
				kprobes = false
				why := "not loaded: " + kprobeErr.Error()
				p.addHook(HookStatus{Name: HookSendmsg, Optional: true, Error: why})
				p.addHook(HookStatus{Name: HookCleanupRbuf, Optional: true, Error: why})
				log.Warn("optional kprobe programs did not load; running without them", "error", kprobeErr)
			}
			if try.sendLength != sendLength && sendLengthErr != nil {
				sendLength = false
				p.addHook(HookStatus{Name: HookSendLength, Optional: true, Error: "not loaded: " + sendLengthErr.Error()})
				log.Warn("optional tracepoint program did not load; running without it",
					"tracepoint", "sock:sock_send_length", "error", sendLengthErr)
			}
			if try.output != output {
				log.Warn("the ring buffer object did not load; events go through the perf buffer",
					"error", ringErr)
			}
			break
		}
		switch {
		case try.kprobes:
			kprobeErr = err
		case try.sendLength:
			sendLengthErr = err
		}
		if try.output == OutputRing {
			ringErr = err
		}
	}
	if err != nil {
		// The last attempt is the baseline: its error is what stops us.
		return nil, loadError(err, memlockErr)
	}
	p.kprobes = kprobes
	if !sendLength {
		// The kprobe reports failed writes instead (icapwatch.c).
		settings.SlSk, settings.SlProtocol, settings.SlRet = offNone, offNone, offNone
	}
	p.settings = settings
	if err := p.configure(cfg, settings); err != nil {
		return nil, err
	}
	if err := p.openReader(cfg); err != nil {
		return nil, err
	}
	return p, nil
}

// objects are the loaded maps and programs, in bpf2go's types. The perf
// and the ring buffer objects name their maps and programs alike, so the
// baseline object's types hold either (TestVariantsNameAlike).
type objects struct {
	icapwatchPrograms // the kprobe programs are nil when a load leaves them out
	icapwatchMaps     // exported_types is never loaded: nil
}

// loadObjects loads one variant of the object.
//
// It loads a collection and takes its maps and programs into objects by
// their ebpf tags. LoadAndAssign into bpf2go's icapwatchObjects would be
// shorter, but it loads every object the struct names and fails on one the
// spec lacks, and a load leaves some out: exported_types always (it only
// carries the enum types into the BTF), the kprobe programs and the
// sock:sock_send_length one when it runs without them. Taking what is there keeps one struct for every load, with
// nil where the load left something out.
func loadObjects(cfg Config, output string, kprobes, sendLength bool, edit func(*ebpf.CollectionSpec, *icapwatchSpecs)) (*objects, error) {
	spec, specs, err := loadSpec(output)
	if err != nil {
		return nil, err
	}
	specs.Flows.MaxEntries = cfg.MaxFlows
	if output == OutputRing {
		specs.Events.MaxEntries = uint32(cfg.RingBuffer)
	}
	if !kprobes {
		for name, prog := range spec.Programs {
			if prog.Type == ebpf.Kprobe {
				delete(spec.Programs, name)
			}
		}
	}
	if !sendLength {
		delete(spec.Programs, specs.IcapwatchSendLength.Name)
	}
	if edit != nil {
		edit(spec, specs)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, err
	}
	defer coll.Close() // whatever objects did not take
	o := &objects{}
	for _, s := range []any{&o.icapwatchPrograms, &o.icapwatchMaps} {
		v := reflect.ValueOf(s).Elem()
		for i := range v.NumField() {
			name := v.Type().Field(i).Tag.Get("ebpf")
			switch f := v.Field(i).Addr().Interface().(type) {
			case **ebpf.Program:
				*f = coll.DetachProgram(name)
			case **ebpf.Map:
				*f = coll.DetachMap(name)
			}
		}
	}
	return o, nil
}

// Close closes every map and program that was loaded.
func (o *objects) Close() error {
	return errors.Join(o.icapwatchPrograms.Close(), o.icapwatchMaps.Close())
}

// loadSpec reads one variant of the embedded object, with bpf2go's names
// for its parts.
func loadSpec(output string) (*ebpf.CollectionSpec, *icapwatchSpecs, error) {
	load := loadIcapwatch
	if output == OutputRing {
		load = loadIcapwatchRingbuf
	}
	spec, err := load()
	if err != nil {
		return nil, nil, fmt.Errorf("read embedded eBPF object: %w", err)
	}
	var specs icapwatchSpecs
	if err := spec.Assign(&specs); err != nil {
		return nil, nil, fmt.Errorf("read embedded eBPF object: %w", err)
	}
	// It only carries the enum types for bpf2go.
	delete(spec.Maps, specs.ExportedTypes.Name)
	return spec, &specs, nil
}

// Capabilities, as the errors name them.
const (
	capsLoad       = "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or CAP_SYS_ADMIN on kernels before 5.8"
	capsTracepoint = "CAP_PERFMON, or CAP_SYS_ADMIN on kernels before 5.8"
)

// loadError keeps the verifier's log and says which capability is missing.
func loadError(err, memlockErr error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("load eBPF programs: the verifier refused them:\n%+v", ve)
	}
	if errors.Is(err, unix.EPERM) {
		if memlockErr != nil {
			return fmt.Errorf("load eBPF programs: %w (needs %s; on kernels before 5.11 also CAP_SYS_RESOURCE to raise RLIMIT_MEMLOCK, which failed: %v)",
				err, capsLoad, memlockErr)
		}
		return fmt.Errorf("load eBPF programs: %w (needs %s)", err, capsLoad)
	}
	return fmt.Errorf("load eBPF programs: %w", err)
}

// needs adds the missing capability to a permission error.
func needs(err error, caps string) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w (needs %s)", err, caps)
	}
	return err
}

// tracepointError: the tracepoint's ID comes from a tracefs file, the
// attach is a perf event.
func tracepointError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return needs(err, capsTracefs)
	}
	return needs(err, capsTracepoint)
}

// configure writes the settings and the watched-port bitmap.
func (p *Probe) configure(cfg Config, settings icapwatchConfig) error {
	if err := p.objs.ConfigMap.Put(uint32(0), settings); err != nil {
		return fmt.Errorf("write settings map: %w", err)
	}
	bitmap := map[uint32]uint32{}
	for _, port := range cfg.Ports {
		bitmap[uint32(port)>>5] |= 1 << (port & 31)
	}
	for idx, bits := range bitmap {
		if err := p.objs.Ports.Put(idx, bits); err != nil {
			return fmt.Errorf("write ports map: %w", err)
		}
	}
	return nil
}

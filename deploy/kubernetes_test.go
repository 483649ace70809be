package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The capabilities of each variant, and what each component adds. Each
// directory of kubernetes/components must be here. componentKinds: the
// object a component adds, for Prometheus Operator.
var (
	variantCaps = map[string][]corev1.Capability{
		"kubernetes":                {"BPF", "PERFMON", "NET_ADMIN"},
		"kubernetes/overlays/rhel8": {"SYS_ADMIN", "NET_ADMIN"},
	}
	componentCaps = map[string][]corev1.Capability{
		"process-names":  {"SYS_PTRACE", "DAC_READ_SEARCH"},
		"memlock":        {"SYS_RESOURCE"},
		"servicemonitor": nil,
		"prometheusrule": nil,
	}
	componentKinds = map[string]string{
		"servicemonitor": "ServiceMonitor",
		"prometheusrule": "PrometheusRule",
	}
)

// TestKubernetesManifests builds the base, the RHEL 8 overlay and each
// component over both as kustomize would (kustomize is not needed: the
// kustomizer below does what the manifests use), decodes every object
// strictly into the Kubernetes API types, so that unknown fields and
// wrong types fail, and checks what each variant grants. Every file a
// kustomization lists must exist, and every manifest must be listed.
func TestKubernetesManifests(t *testing.T) {
	k := &kustomizer{read: map[string]bool{}}
	for dir, caps := range variantCaps {
		t.Run(dir, func(t *testing.T) {
			objs, err := k.buildRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			checkObjects(t, objs, caps, "")
		})
	}

	comps, err := os.ReadDir("kubernetes/components")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range comps {
		extra, ok := componentCaps[c.Name()]
		if !ok {
			t.Errorf("kubernetes/components/%s: no expectation in componentCaps", c.Name())
			continue
		}
		comp := filepath.Join("kubernetes/components", c.Name())
		for dir, caps := range variantCaps {
			want := slices.Concat(caps, extra)
			// As README.md says: in a kustomization of the operator's
			// own, over the base or the overlay.
			t.Run(comp+" over "+dir, func(t *testing.T) {
				own := kustomization{APIVersion: kustomizeV1beta1, Kind: "Kustomization",
					Resources: []string{dir}, Components: []string{comp}}
				objs, err := k.build(".", own, nil)
				if err != nil {
					t.Fatal(err)
				}
				checkObjects(t, objs, want, componentKinds[c.Name()])
			})
			// Listed in the variant's own kustomization, the component
			// comes before the variant's patches: the same result.
			t.Run(comp+" in "+dir, func(t *testing.T) {
				kz, err := k.load(dir, "Kustomization")
				if err != nil {
					t.Fatal(err)
				}
				rel, err := filepath.Rel(dir, comp)
				if err != nil {
					t.Fatal(err)
				}
				kz.Components = append(kz.Components, rel)
				objs, err := k.build(dir, kz, nil)
				if err != nil {
					t.Fatal(err)
				}
				checkObjects(t, objs, want, componentKinds[c.Name()])
			})
		}
	}

	err = filepath.WalkDir("kubernetes", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".yaml") && !k.read[path] {
			t.Errorf("%s: no kustomization lists it", path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// checkObjects decodes the objects strictly and checks them: the agent's
// DaemonSet with exactly the capabilities caps, its namespace, ConfigMap
// and Service, and one object of kind extra when it is not empty: a
// ServiceMonitor or a PrometheusRule.
func checkObjects(t *testing.T, objs []object, caps []corev1.Capability, extra string) {
	t.Helper()
	var (
		kinds   []string
		ds      appsv1.DaemonSet
		svc     corev1.Service
		cm      corev1.ConfigMap
		ns      corev1.Namespace
		sm      serviceMonitor
		pr      prometheusRule
		targets = map[string]any{"DaemonSet": &ds, "Service": &svc, "ConfigMap": &cm, "Namespace": &ns,
			"ServiceMonitor": &sm, "PrometheusRule": &pr}
	)
	for _, o := range objs {
		kinds = append(kinds, o.kind())
		target, ok := targets[o.kind()]
		if !ok {
			t.Errorf("%s: unexpected kind %q", o.file, o.kind())
			continue
		}
		b, err := json.Marshal(o.doc)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(b, target); err != nil {
			t.Errorf("%s (%s): %v", o.file, o.kind(), err)
		}
	}
	slices.Sort(kinds)
	want := []string{"ConfigMap", "DaemonSet", "Namespace", "Service"}
	if extra != "" {
		want = append(want, extra)
		slices.Sort(want)
	}
	if !slices.Equal(kinds, want) {
		t.Fatalf("objects %v, want one each of %v", kinds, want)
	}

	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 1 || len(spec.Containers[0].Ports) != 1 {
		t.Fatalf("DaemonSet: want 1 container with 1 port")
	}
	c := spec.Containers[0]
	if !spec.HostNetwork || len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists {
		t.Error("DaemonSet: want hostNetwork and a toleration for every taint")
	}
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || sc.Privileged == nil || *sc.Privileged ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Fatalf("DaemonSet: security context %+v, want capabilities, not privileged, no privilege escalation", sc)
	}
	if got := sc.Capabilities; !slices.Equal(got.Add, caps) || !slices.Equal(got.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("DaemonSet: capabilities add %v drop %v, want exactly %v and drop ALL", got.Add, got.Drop, caps)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" ||
		c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("DaemonSet: want liveness on /healthz and readiness on /readyz")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Error("DaemonSet: want requests and limits")
	}
	memLimit := false
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" && e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil &&
			e.ValueFrom.ResourceFieldRef.Resource == "limits.memory" {
			memLimit = true
		}
	}
	if !memLimit {
		t.Error("DaemonSet: want GOMEMLIMIT from the container's memory limit")
	}
	var mounts []string
	for _, m := range c.VolumeMounts {
		mounts = append(mounts, m.MountPath)
	}
	for _, want := range []string{"/sys/fs/bpf", "/sys/kernel/tracing", "/host/proc"} {
		if !slices.Contains(mounts, want) {
			t.Errorf("DaemonSet: no mount at %s", want)
		}
	}
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != cm.Name {
		t.Errorf("DaemonSet: want its flags from ConfigMap %s", cm.Name)
	}
	for _, o := range []struct{ kind, namespace string }{{"DaemonSet", ds.Namespace}, {"ConfigMap", cm.Namespace},
		{"Service", svc.Namespace}} {
		if o.namespace != ns.Name {
			t.Errorf("%s in namespace %q, want %q", o.kind, o.namespace, ns.Name)
		}
	}
	podLabels := ds.Spec.Template.Labels
	if ds.Spec.Selector == nil || !selects(ds.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("DaemonSet: selector %v does not select its pods (labels %v)", ds.Spec.Selector, podLabels)
	}
	if !selects(svc.Spec.Selector, podLabels) || len(svc.Spec.Ports) != 1 ||
		svc.Spec.Ports[0].TargetPort.StrVal != c.Ports[0].Name {
		t.Errorf("Service: selector %v and ports %+v do not reach the pods (labels %v, port %s)",
			svc.Spec.Selector, svc.Spec.Ports, podLabels, c.Ports[0].Name)
	}
	switch extra {
	case "ServiceMonitor":
		checkServiceMonitor(t, sm, svc, ns)
	case "PrometheusRule":
		checkPrometheusRule(t, pr, ns)
	}
}

// checkServiceMonitor: the ServiceMonitor scrapes the agents' Service
// under the job name the rules expect.
func checkServiceMonitor(t *testing.T, sm serviceMonitor, svc corev1.Service, ns corev1.Namespace) {
	t.Helper()
	if sm.APIVersion != "monitoring.coreos.com/v1" || sm.Metadata.Namespace != ns.Name {
		t.Errorf("ServiceMonitor: %s in %q, want monitoring.coreos.com/v1 in %q", sm.APIVersion, sm.Metadata.Namespace, ns.Name)
	}
	// Prometheus Operator names the job after the Service: the rules'
	// job="icapwatch".
	if !selects(sm.Spec.Selector.MatchLabels, svc.Labels) || !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{svc.Namespace}) ||
		svc.Name != "icapwatch" {
		t.Errorf("ServiceMonitor: selector %v in %v does not select Service %s/%s (labels %v), or the job would not be icapwatch",
			sm.Spec.Selector.MatchLabels, sm.Spec.NamespaceSelector.MatchNames, svc.Namespace, svc.Name, svc.Labels)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != svc.Spec.Ports[0].Name || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor: endpoints %+v, want /metrics on the Service's port %s", sm.Spec.Endpoints, svc.Spec.Ports[0].Name)
	}
}

// selects says whether a non-empty equality selector matches the labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// serviceMonitor is the part of Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1) the component uses, for a strict decoding.
type serviceMonitor struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port        string `json:"port"`
			Path        string `json:"path"`
			Interval    string `json:"interval"`
			Relabelings []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
			} `json:"relabelings"`
		} `json:"endpoints"`
	} `json:"spec"`
}

const (
	kustomizeV1beta1  = "kustomize.config.k8s.io/v1beta1"
	kustomizeV1alpha1 = "kustomize.config.k8s.io/v1alpha1"
)

// kustomization is the part of kustomize's Kustomization and Component
// the manifests use: decoded strictly, anything more fails the test until
// the kustomizer learns it.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources,omitempty"`
	Components []string `json:"components,omitempty"`
	Patches    []struct {
		Path   string `json:"path"`
		Target struct {
			Group   string `json:"group"`
			Version string `json:"version"`
			Kind    string `json:"kind"`
			Name    string `json:"name"`
		} `json:"target"`
	} `json:"patches,omitempty"`
}

// object is a manifest as kustomize holds it: generic JSON.
type object struct {
	file string
	doc  map[string]any
}

func (o object) kind() string {
	s, _ := o.doc["kind"].(string)
	return s
}

func (o object) name() string {
	md, _ := o.doc["metadata"].(map[string]any)
	s, _ := md["name"].(string)
	return s
}

// groupVersion splits apiVersion: "apps/v1" is group apps, "v1" the core
// group.
func (o object) groupVersion() (group, version string) {
	s, _ := o.doc["apiVersion"].(string)
	if g, v, ok := strings.Cut(s, "/"); ok {
		return g, v
	}
	return "", s
}

// kustomizer builds kustomizations as kustomize does, for what the
// manifests use: resources (files, or directories with a kustomization),
// components, and JSON patches on a target. It notes the files it reads.
type kustomizer struct {
	read map[string]bool
}

func (k *kustomizer) load(dir, kind string) (kustomization, error) {
	var kz kustomization
	file := filepath.Join(dir, "kustomization.yaml")
	if err := k.decode(file, &kz); err != nil {
		return kz, err
	}
	want := map[string]string{"Kustomization": kustomizeV1beta1, "Component": kustomizeV1alpha1}[kind]
	if kz.Kind != kind || kz.APIVersion != want {
		return kz, fmt.Errorf("%s: %s %s, want %s %s", file, kz.APIVersion, kz.Kind, want, kind)
	}
	return kz, nil
}

// build adds to objs the objects of kz, whose files are relative to dir,
// in kustomize's order: resources, components, then its own patches.
func (k *kustomizer) build(dir string, kz kustomization, objs []object) ([]object, error) {
	for _, r := range kz.Resources {
		path := filepath.Join(dir, r)
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("%s: resource: %w", dir, err)
		}
		if !fi.IsDir() {
			more, err := k.objects(path)
			if err != nil {
				return nil, err
			}
			objs = append(objs, more...)
			continue
		}
		if objs, err = k.buildDir(dir, path, "Kustomization", objs); err != nil {
			return nil, err
		}
	}
	for _, c := range kz.Components {
		var err error
		if objs, err = k.buildDir(dir, filepath.Join(dir, c), "Component", objs); err != nil {
			return nil, err
		}
	}
	for _, p := range kz.Patches {
		file := filepath.Join(dir, p.Path)
		var ops []jsonOp
		if err := k.decode(file, &ops); err != nil {
			return nil, fmt.Errorf("%w (only JSON patches are understood here)", err)
		}
		matched := 0
		for i, o := range objs {
			group, version := o.groupVersion()
			tg := p.Target
			if tg.Kind != o.kind() || tg.Name != o.name() || tg.Group != group || tg.Version != version {
				continue
			}
			doc, err := applyJSONPatch(o.doc, ops)
			if err != nil {
				return nil, fmt.Errorf("%s on %s: %w", file, o.file, err)
			}
			objs[i].doc = doc
			matched++
		}
		if matched != 1 {
			return nil, fmt.Errorf("%s: the target %+v matches %d objects, want 1", file, p.Target, matched)
		}
	}
	return objs, nil
}

// buildRoot builds the kustomization at dir, as kubectl apply -k dir.
func (k *kustomizer) buildRoot(dir string) ([]object, error) {
	kz, err := k.load(dir, "Kustomization")
	if err != nil {
		return nil, err
	}
	return k.build(dir, kz, nil)
}

// buildDir builds the kustomization or component that dir lists at path.
func (k *kustomizer) buildDir(dir, path, kind string, objs []object) ([]object, error) {
	if err := notAbove(dir, path); err != nil {
		return nil, err
	}
	sub, err := k.load(path, kind)
	if err != nil {
		return nil, err
	}
	return k.build(path, sub, objs)
}

// notAbove fails, as kustomize does ("cycle detected"), when a
// kustomization at dir lists a directory that holds dir: an overlay
// cannot live inside its base's directory.
func notAbove(dir, listed string) error {
	d, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	l, err := filepath.Abs(listed)
	if err != nil {
		return err
	}
	if d == l || strings.HasPrefix(d, l+string(filepath.Separator)) {
		return fmt.Errorf("%s lists %s, which holds it: kustomize refuses that as a cycle", dir, listed)
	}
	return nil
}

// objects reads the documents of a manifest file.
func (k *kustomizer) objects(file string) ([]object, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	k.read[file] = true
	var objs []object
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		o := object{file: file}
		if err := json.Unmarshal(j, &o.doc); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if o.doc == nil {
			continue
		}
		if o.kind() == "" || o.name() == "" {
			return nil, fmt.Errorf("%s: a document without kind or name", file)
		}
		objs = append(objs, o)
	}
	return objs, nil
}

// decode reads a kustomization or a patch strictly.
func (k *kustomizer) decode(file string, v any) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	k.read[file] = true
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return nil
}

// jsonOp is one operation of a JSON patch (RFC 6902), as the overlay and
// the components write them for kustomize.
type jsonOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value,omitempty"`
}

// applyJSONPatch applies a patch to an object as kustomize does: the
// first failing operation (a failed test among them) fails it.
func applyJSONPatch(doc map[string]any, ops []jsonOp) (map[string]any, error) {
	opsJSON, err := json.Marshal(ops)
	if err != nil {
		return nil, err
	}
	patch, err := jsonpatch.DecodePatch(opsJSON)
	if err != nil {
		return nil, err
	}
	docJSON, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	if docJSON, err = patch.Apply(docJSON); err != nil {
		return nil, err
	}
	var out map[string]any
	return out, json.Unmarshal(docJSON, &out)
}

// The kustomizer must fail where kustomize would; a broken kustomizer
// would let any manifest pass.
func TestKustomizerFails(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n"
	const patch = "patches:\n  - path: p.yaml\n    target: {version: v1, kind: ConfigMap, name: a}\n"
	write("cm.yaml", cm)
	for name, tc := range map[string]struct{ kust, patch, err string }{
		"missing resource": {"resources: [nope.yaml]\n", "", "no such file"},
		"unknown field":    {"resources: [cm.yaml]\nnamePrefix: x-\n", "", "unknown field"},
		"patch misses":     {"resources: [cm.yaml]\n" + strings.Replace(patch, "name: a", "name: b", 1), "- {op: remove, path: /data/k}\n", "matches 0 objects"},
		"patch fails":      {"resources: [cm.yaml]\n" + patch, "- {op: test, path: /data/k, value: w}\n", "test failed"},
		"strategic merge":  {"resources: [cm.yaml]\n" + patch, "data: {k: w}\n", "only JSON patches"},
		"missing patch":    {"resources: [cm.yaml]\n" + patch, "", "p.yaml"},
		"base holds it":    {"resources: [..]\n", "", "cycle"},
		"itself":           {"components: [.]\n", "", "cycle"},
	} {
		t.Run(name, func(t *testing.T) {
			os.Remove(filepath.Join(dir, "p.yaml"))
			if tc.patch != "" {
				write("p.yaml", tc.patch)
			}
			write("kustomization.yaml", "apiVersion: "+kustomizeV1beta1+"\nkind: Kustomization\n"+tc.kust)
			k := &kustomizer{read: map[string]bool{}}
			_, err := k.buildRoot(dir)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("error %v, want one with %q", err, tc.err)
			}
		})
	}
	// And a patch that applies changes the object.
	write("p.yaml", "- {op: replace, path: /data/k, value: w}\n")
	write("kustomization.yaml", "apiVersion: "+kustomizeV1beta1+"\nkind: Kustomization\nresources: [cm.yaml]\n"+patch)
	k := &kustomizer{read: map[string]bool{}}
	objs, err := k.buildRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := objs[0].doc["data"]; !maps.Equal(got.(map[string]any), map[string]any{"k": "w"}) {
		t.Errorf("patched data %v, want k: w", got)
	}
}

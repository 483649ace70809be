package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TestKubernetesManifests decodes every manifest strictly into the
// Kubernetes API types: unknown fields and wrong types fail.
func TestKubernetesManifests(t *testing.T) {
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	daemonsets := map[string]*appsv1.DaemonSet{}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range bytes.Split(b, []byte("\n---\n")) {
			var head struct{ Kind string }
			if err := yaml.Unmarshal(doc, &head); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			var obj any
			switch head.Kind {
			case "Namespace":
				obj = &corev1.Namespace{}
			case "ConfigMap":
				obj = &corev1.ConfigMap{}
			case "Service":
				obj = &corev1.Service{}
			case "DaemonSet":
				ds := &appsv1.DaemonSet{}
				daemonsets[filepath.Base(file)] = ds
				obj = ds
			case "Kustomization":
				obj = &struct {
					APIVersion string   `json:"apiVersion"`
					Kind       string   `json:"kind"`
					Resources  []string `json:"resources"`
				}{}
			default:
				t.Fatalf("%s: unexpected kind %q", file, head.Kind)
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Errorf("%s: %v", file, err)
			}
		}
	}
	for name, want := range map[string][]corev1.Capability{
		"daemonset.yaml":       {"BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE", "SYS_PTRACE"},
		"daemonset-rhel8.yaml": {"SYS_ADMIN", "NET_ADMIN", "SYS_RESOURCE", "SYS_PTRACE"},
	} {
		ds := daemonsets[name]
		if ds == nil {
			t.Errorf("%s missing", name)
			continue
		}
		spec := ds.Spec.Template.Spec
		c := spec.Containers[0]
		if !spec.HostNetwork || len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists {
			t.Errorf("%s: want hostNetwork and a toleration for every taint", name)
		}
		if caps := c.SecurityContext.Capabilities; !slices.Equal(caps.Add, want) || !slices.Equal(caps.Drop, []corev1.Capability{"ALL"}) ||
			c.SecurityContext.Privileged == nil || *c.SecurityContext.Privileged {
			t.Errorf("%s: capabilities %+v, want exactly %v and not privileged", name, caps, want)
		}
		if c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
			t.Errorf("%s: probes", name)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: requests and limits", name)
		}
		var mounts []string
		for _, m := range c.VolumeMounts {
			mounts = append(mounts, m.MountPath)
		}
		for _, want := range []string{"/sys/fs/bpf", "/sys/kernel/tracing", "/host/proc"} {
			if !slices.Contains(mounts, want) {
				t.Errorf("%s: no mount at %s", name, want)
			}
		}
	}
	// The kustomization names files that exist.
	b, _ := os.ReadFile("kubernetes/kustomization.yaml")
	for _, line := range strings.Split(string(b), "\n") {
		if res, ok := strings.CutPrefix(strings.TrimSpace(line), "- "); ok {
			if _, err := os.Stat(filepath.Join("kubernetes", res)); err != nil {
				t.Errorf("kustomization: %v", err)
			}
		}
	}
}

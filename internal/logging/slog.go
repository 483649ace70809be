package logging

import (
	"context"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// Slog gives libraries that want a *slog.Logger (exporter-toolkit) the
// agent's hclog logger, with its level and format.
func Slog(l hclog.Logger) *slog.Logger { return slog.New(&slogHandler{l: l}) }

type slogHandler struct {
	l     hclog.Logger
	attrs []any
	group string
}

func (h *slogHandler) Enabled(_ context.Context, level slog.Level) bool {
	return h.l.GetLevel() <= hclogLevel(level)
}

func (h *slogHandler) Handle(_ context.Context, r slog.Record) error {
	args := append([]any(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		args = append(args, h.key(a.Key), a.Value.Resolve().Any())
		return true
	})
	h.l.Log(hclogLevel(r.Level), r.Message, args...)
	return nil
}

func (h *slogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &slogHandler{l: h.l, group: h.group, attrs: append([]any(nil), h.attrs...)}
	for _, a := range attrs {
		n.attrs = append(n.attrs, h.key(a.Key), a.Value.Resolve().Any())
	}
	return n
}

func (h *slogHandler) WithGroup(name string) slog.Handler {
	return &slogHandler{l: h.l, attrs: h.attrs, group: h.key(name)}
}

func (h *slogHandler) key(k string) string {
	if h.group == "" {
		return k
	}
	return h.group + "." + k
}

func hclogLevel(l slog.Level) hclog.Level {
	switch {
	case l < slog.LevelInfo:
		return hclog.Debug
	case l < slog.LevelWarn:
		return hclog.Info
	case l < slog.LevelError:
		return hclog.Warn
	}
	return hclog.Error
}

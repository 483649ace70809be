// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/*
 * icapwatch kernel side: a TC classifier that turns the packets of watched
 * TCP ports into exchange-boundary events, two TCP tracepoints, and where
 * the kernel has them an optional tracepoint (sock:sock_send_length) and
 * two optional kprobes.
 *
 * The baseline must load on upstream 4.18: helpers up to 80, no loops, no
 * global data, no bpf-to-bpf calls (everything is inlined), map types
 * hash / LRU hash / array / per-CPU array / perf event array. Built with
 * -DICAPWATCH_RINGBUF, the same source sends events through a BPF ring
 * buffer (5.8+) instead; the loader picks the object by probing.
 */

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "icapwatch.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

/* include/net/tcp_states.h */
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

/* TLS content types (RFC 8446, section 5.1). */
#define TLS_CHANGE_CIPHER_SPEC 0x14
#define TLS_ALERT 0x15
#define TLS_HANDSHAKE 0x16
#define TLS_APPLICATION_DATA 0x17
#define TLS_SERVER_HELLO 0x02
#define TLS_RECORD_HEADER 5
/* A TLS 1.3 alert: 2 bytes, the inner content type, a 16-byte AEAD tag. */
#define TLS13_ALERT_RECORD 19

#define NSEC_PER_SEC 1000000000ULL
/*
 * The same packet seen at a second hook (loopback egress then ingress, a
 * pod's veth then the uplink) is dropped: per direction, the first hook to
 * see a flow's packets owns it until it has been silent this long.
 */
#define OWNER_SILENCE_NS NSEC_PER_SEC
/* After a full ACK, more request bytes re-arm EV_ACKED at most this often. */
#define ACK_REARM_NS NSEC_PER_SEC

/* TCP flags, byte 13 of the header (RFC 9293). */
#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10

struct flow_key {
	__u8 client[16];
	__u8 server[16];
	__u16 client_port;
	__u16 server_port;
	__u8 family;
	__u8 pad[3];
};

enum exchange_state {
	EX_IDLE = 0,
	EX_OPEN = 1,      /* request sent, no answer yet */
	EX_TENTATIVE = 2, /* answered by what may be a TLS 1.3 session ticket */
};

/* struct flow.hs bits: what the TLS handshake has told so far. */
#define HS_FINAL_PENDING 0x01  /* the client's next flight expects no answer */
#define HS_TICKET_PENDING 0x02 /* a TLS 1.3 server may still send tickets */
#define HS_TLS13 0x04

/* struct flow.tls */
#define TLS_UNKNOWN 0
#define TLS_YES 1
#define TLS_NO 2

struct flow {
	__u64 ex_start_ns;
	__u64 last_data_ns; /* last payload in either direction */
	__u64 acked_ns;
	__u64 server_data_ns;
	__u64 own_ns[2];
	__u64 pend_ns[2];  /* a lone 19-byte record that may be a close_notify */
	__u32 own[2];      /* (ifindex << 1 | hook) + 1 of the owning hook */
	__u32 hi[2];       /* next sequence number expected per direction */
	__u32 pend_end[2];
	__u32 ex_seq;
	__u32 ex_bytes;
	__u8 ex;
	__u8 phase;
	__u8 acked;
	__u8 tls;
	__u8 hs;
	__u8 known; /* bit d: hi[d] is valid; bit 2+d: FIN seen from d */
	__u8 pend;  /* bit d: pend_* of direction d hold a record */
	__u8 midstream;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config_map SEC(".maps");

/* The watched ports as a bitmap: entry port/32, bit port%32. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536 / 32);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

/* max_entries is set by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/*
 * By ifindex, the network namespace at the other end of a watched
 * interface that has one there (a veth whose peer is a pod's): the
 * namespace whose sockets send what comes in through it. The loader
 * keeps it as interfaces come, go and move.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} peer_ns SEC(".maps");

/*
 * The task that connected, by socket: at SYN_SENT the local port is not
 * chosen yet, so the owner is told again on the socket's later states.
 */
struct owner {
	__u32 pid;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct owner);
} owners SEC(".maps");

/*
 * A watched socket's flow and its last two TCP states, by socket address.
 * Unlike owners it outlives CLOSE: a socket the server reset is in CLOSE
 * when its application writes on it next, and that failed write (which
 * sends nothing) names only the socket. The LRU bounds it; a socket
 * address reused by a new connection is told anew at its SYN_SENT.
 */
struct sock_info {
	struct flow_key key;
	__u8 dir;   /* the way this socket sends */
	__u8 state; /* its TCP state */
	__u8 prev;  /* the state before */
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct sock_info);
} sockets SEC(".maps");

/* Scratch space for one event and one new flow: the stack is small. */
struct scratch {
	struct event ev;
	struct flow fl;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

#ifdef ICAPWATCH_RINGBUF
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");
#else
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} events SEC(".maps");
#endif

/*
 * Never loaded (the loader drops it): its value type puts the enums into
 * the object's BTF, where bpf2go finds them, without global data.
 */
struct exported_types {
	enum event_type type;
	enum event_flag flag;
	enum counter counter;
	enum direction dir;
	enum hook hook;
	enum phase phase;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exported_types);
} exported_types SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline int watched(__u16 port)
{
	__u32 idx = port >> 5;
	__u32 *bits = bpf_map_lookup_elem(&ports, &idx);

	return bits && (*bits & (1U << (port & 31)));
}

/* Sequence arithmetic modulo 2^32 (RFC 9293). */
static __always_inline int seq_after(__u32 a, __u32 b)
{
	return (__s32)(a - b) > 0;
}

/*
 * No wakeup per event: waking the reader costs microseconds inside the
 * program (an IPI on a VM). The reader polls every few tens of
 * milliseconds instead, and the perf buffer wakes it only half full.
 */
static __always_inline void emit(void *ctx, struct event *ev)
{
	long err;

#ifdef ICAPWATCH_RINGBUF
	err = bpf_ringbuf_output(&events, ev, sizeof(*ev), BPF_RB_NO_WAKEUP);
#else
	err = bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, ev, sizeof(*ev));
#endif
	count(err ? CNT_EVENTS_LOST : CNT_EVENTS);
}

static __always_inline struct scratch *get_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&scratch, &zero);
}

/* The event for packet-level kinds: the flow's tuple plus this segment. */
static __always_inline void packet_event(struct event *ev, const struct flow_key *key,
					 __u8 type, __u8 dir, __u8 hook, __u32 ifindex,
					 __u64 now, __u32 seq, __u32 ack, __u32 len)
{
	__builtin_memset(ev, 0, sizeof(*ev));
	__builtin_memcpy(ev->client, key->client, 16);
	__builtin_memcpy(ev->server, key->server, 16);
	ev->client_port = key->client_port;
	ev->server_port = key->server_port;
	ev->family = key->family;
	ev->type = type;
	ev->dir = dir;
	ev->hook = hook;
	ev->ifindex = ifindex;
	ev->ts_ns = now;
	ev->seq = seq;
	ev->ack = ack;
	ev->len = len;
}

static __always_inline __u32 flow_flags(const struct flow *f)
{
	__u32 flags = 0;

	if (f->midstream)
		flags |= EVF_MIDSTREAM;
	if (f->hs & HS_TLS13)
		flags |= EVF_TLS13;
	if (f->tls == TLS_NO)
		flags |= EVF_PLAIN;
	if (f->ex == EX_OPEN)
		flags |= EVF_OPEN_EXCHANGE;
	return flags;
}

struct segment {
	__u32 seq;
	__u32 ack;
	__u32 len;     /* payload bytes */
	__u32 payload; /* offset of the payload in the packet */
	__u8 flags;    /* TCP flags */
	__u8 rec[5];   /* the first bytes of the payload: a TLS record header */
	__u8 have;     /* how many of rec[] are valid */
};

static __always_inline int is_tls_record(const struct segment *s)
{
	return s->have >= 3 && s->rec[0] >= TLS_CHANGE_CIPHER_SPEC &&
	       s->rec[0] <= TLS_APPLICATION_DATA && s->rec[1] == 3 && s->rec[2] <= 4;
}

static __always_inline __u16 record_len(const struct segment *s)
{
	return s->have == 5 ? ((__u16)s->rec[3] << 8 | s->rec[4]) : 0;
}

/* Reads the TLS record header at payload offset off (0 if out of the segment). */
static __always_inline __u8 record_at(struct __sk_buff *skb, const struct segment *s,
				      __u32 off, __u16 *len)
{
	__u8 hdr[TLS_RECORD_HEADER] = {};

	*len = 0;
	if (off > 0xffff || off + TLS_RECORD_HEADER > s->len)
		return 0;
	if (bpf_skb_load_bytes(skb, s->payload + off, hdr, sizeof(hdr)) < 0)
		return 0;
	*len = (__u16)hdr[3] << 8 | hdr[4];
	return hdr[0];
}

/*
 * A ServerHello tells two things: TLS 1.3 (its cipher suite is 0x13xx,
 * RFC 8446 appendix B.4), and whether the client's next flight gets an
 * answer. After a full TLS 1.2 handshake it does (the server's Finished);
 * after TLS 1.3 or a TLS 1.2 resumption, where the ServerHello is followed
 * by ChangeCipherSpec or encrypted records, it does not.
 */
static __always_inline void server_hello(struct __sk_buff *skb, struct flow *f,
					 const struct segment *s)
{
	/* record header, handshake header (4), version (2), random (32) */
	const __u32 sid_off = TLS_RECORD_HEADER + 4 + 2 + 32;
	__u8 b[2] = {};
	__u8 msg = 0, sid_len = 0, next;
	__u16 next_len;

	if (bpf_skb_load_bytes(skb, s->payload + TLS_RECORD_HEADER, &msg, 1) < 0 ||
	    msg != TLS_SERVER_HELLO)
		return;
	if (s->len < sid_off + 1 ||
	    bpf_skb_load_bytes(skb, s->payload + sid_off, &sid_len, 1) < 0 || sid_len > 32)
		return;
	if (s->len >= sid_off + 1 + sid_len + 2 &&
	    bpf_skb_load_bytes(skb, s->payload + sid_off + 1 + sid_len, b, 2) == 0 &&
	    b[0] == 0x13)
		f->hs |= HS_TLS13;
	next = record_at(skb, s, TLS_RECORD_HEADER + record_len(s), &next_len);
	if (next == TLS_CHANGE_CIPHER_SPEC || next == TLS_APPLICATION_DATA ||
	    (next == 0 && (f->hs & HS_TLS13)))
		f->hs |= HS_FINAL_PENDING;
	else
		f->hs &= ~HS_FINAL_PENDING;
}

/*
 * The client's last handshake flight (ChangeCipherSpec and Finished, or
 * Finished alone) gets no answer. Returns the bytes it takes in the
 * segment, so that a request sent in the same segment still opens an
 * exchange.
 */
static __always_inline __u32 final_flight_len(struct __sk_buff *skb, const struct segment *s)
{
	__u32 n = TLS_RECORD_HEADER + record_len(s);
	__u16 len2;

	if (s->rec[0] == TLS_CHANGE_CIPHER_SPEC &&
	    record_at(skb, s, n, &len2) == TLS_APPLICATION_DATA)
		n += TLS_RECORD_HEADER + len2;
	return n;
}

static __always_inline void client_data(struct __sk_buff *skb, struct flow *f,
					const struct flow_key *key, const struct segment *s,
					struct event *ev, __u8 hook, __u64 now, __u64 start_ns)
{
	__u8 phase;
	int tls = is_tls_record(s);

	if (tls && s->rec[0] == TLS_ALERT) {
		packet_event(ev, key, EV_TLS_ALERT, DIR_TO_SERVER, hook, skb->ifindex, now,
			     s->seq, s->ack, s->len);
		ev->flags = flow_flags(f);
		ev->record_type = s->rec[0];
		ev->record_len = record_len(s);
		emit(skb, ev);
		return;
	}
	if (f->ex == EX_OPEN) {
		f->ex_bytes += s->len;
		if (f->acked && now - f->acked_ns >= ACK_REARM_NS)
			f->acked = 0;
		return;
	}
	phase = (tls && (s->rec[0] == TLS_HANDSHAKE || s->rec[0] == TLS_CHANGE_CIPHER_SPEC)) ?
			PHASE_HANDSHAKE : PHASE_REQUEST;
	if ((f->hs & HS_FINAL_PENDING) && tls &&
	    (s->rec[0] == TLS_CHANGE_CIPHER_SPEC || s->rec[0] == TLS_APPLICATION_DATA)) {
		f->hs &= ~HS_FINAL_PENDING;
		if (f->hs & HS_TLS13)
			f->hs |= HS_TICKET_PENDING;
		if (s->len <= final_flight_len(skb, s)) {
			f->ex = EX_IDLE;
			return;
		}
		phase = PHASE_REQUEST;
	}
	packet_event(ev, key, EV_EXCHANGE_START, DIR_TO_SERVER, hook, skb->ifindex, start_ns,
		     s->seq, s->ack, s->len);
	ev->ref_ns = f->last_data_ns;
	ev->phase = phase;
	ev->bytes = s->len;
	ev->record_type = s->rec[0];
	ev->record_len = record_len(s);
	f->ex = EX_OPEN;
	f->phase = phase;
	f->ex_start_ns = start_ns;
	f->ex_seq = s->seq;
	f->ex_bytes = s->len;
	f->acked = 0;
	ev->flags = flow_flags(f);
	emit(skb, ev);
}

static __always_inline void server_data(struct __sk_buff *skb, struct flow *f,
					const struct flow_key *key, const struct segment *s,
					struct event *ev, __u8 hook, __u64 now, __u64 start_ns)
{
	__u32 flags = 0;
	__u64 prev = f->server_data_ns;
	int tls = is_tls_record(s);

	f->server_data_ns = now;
	if (tls && s->rec[0] == TLS_ALERT) {
		packet_event(ev, key, EV_TLS_ALERT, DIR_TO_CLIENT, hook, skb->ifindex, now,
			     s->seq, s->ack, s->len);
		ev->flags = flow_flags(f);
		ev->record_type = s->rec[0];
		ev->record_len = record_len(s);
		emit(skb, ev);
		return;
	}
	if (tls && s->rec[0] == TLS_HANDSHAKE)
		server_hello(skb, f, s);

	if (f->ex == EX_OPEN) {
		if ((f->hs & HS_TICKET_PENDING) && tls && s->rec[0] == TLS_APPLICATION_DATA) {
			f->hs &= ~HS_TICKET_PENDING;
			flags = EVF_MAYBE_TICKET;
		}
	} else if (f->ex == EX_TENTATIVE && tls && s->rec[0] == TLS_APPLICATION_DATA) {
		flags = EVF_AFTER_TICKET;
	} else {
		/* Server data with no request open: a TLS 1.3 ticket, or more answer. */
		if (tls && s->rec[0] == TLS_APPLICATION_DATA)
			f->hs &= ~HS_TICKET_PENDING;
		return;
	}
	packet_event(ev, key, EV_ANSWER, DIR_TO_CLIENT, hook, skb->ifindex, start_ns,
		     s->seq, s->ack, s->len);
	ev->ref_ns = (flags & EVF_AFTER_TICKET) ? prev : f->ex_start_ns;
	ev->phase = f->phase;
	ev->bytes = f->ex_bytes;
	ev->record_type = s->rec[0];
	ev->record_len = record_len(s);
	ev->flags = flow_flags(f) | flags;
	f->ex = (flags & EVF_MAYBE_TICKET) ? EX_TENTATIVE : EX_IDLE;
	f->acked = 1;
	emit(skb, ev);
}

/*
 * The end of a direction's stream (its FIN, or a reset) at end: a lone
 * 19-byte record held right before it was that side's TLS 1.3
 * close_notify. The alert is stamped now, when it is known, as every
 * event is (the reader keeps the events in the order of their stamps),
 * and ref_ns holds the record's own time: the moment that side began to
 * close, which the correlator takes as the alert's time.
 */
static __always_inline void held_close_notify(struct __sk_buff *skb, struct flow *f,
					      const struct flow_key *key, struct event *ev,
					      __u8 dir, __u8 hook, __u64 now, __u32 end, __u32 ack)
{
	__u8 bit = 1 << (dir & 1);

	if (!(f->pend & bit) || f->pend_end[dir & 1] != end)
		return;
	f->pend &= ~bit;
	packet_event(ev, key, EV_TLS_ALERT, dir, hook, skb->ifindex, now,
		     end - TLS_RECORD_HEADER - TLS13_ALERT_RECORD, ack,
		     TLS_RECORD_HEADER + TLS13_ALERT_RECORD);
	ev->ref_ns = f->pend_ns[dir & 1];
	ev->flags = flow_flags(f) | EVF_PROBABLE;
	ev->record_type = TLS_APPLICATION_DATA;
	ev->record_len = TLS13_ALERT_RECORD;
	emit(skb, ev);
}

/*
 * Copies a header out of the packet: straight from the linear data where
 * it is there (no helper call, the common case), else through
 * bpf_skb_load_bytes. off is at most ETH_HLEN + 60 (an IPv4 header with
 * options), len a constant.
 */
static __always_inline int load_header(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (off <= ETH_HLEN + 60 && data + off + len <= end) {
		__builtin_memcpy(to, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

/* Loads the segment's headers; returns 0 when the packet is not ours. */
static __always_inline int parse(struct __sk_buff *skb, struct flow_key *key,
				 struct segment *s, __u8 *dir)
{
	__u8 tcp[20];
	__u32 l4, total;
	__u16 sport, dport;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 ip[20];
		__u32 ihl;

		if (load_header(skb, ETH_HLEN, ip, sizeof(ip)) < 0)
			return 0;
		/* TCP only, and only the first fragment carries its header. */
		if (ip[9] != IPPROTO_TCP || ((ip[6] & 0x1f) | ip[7]))
			return 0;
		ihl = (ip[0] & 0x0f) * 4;
		total = (__u32)ip[2] << 8 | ip[3];
		if (ihl < 20 || total < ihl)
			return -1;
		l4 = ETH_HLEN + ihl;
		total -= ihl;
		key->family = AF_INET;
		__builtin_memcpy(&key->client, ip + 12, 4);
		__builtin_memcpy(&key->server, ip + 16, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 ip6[40];

		if (load_header(skb, ETH_HLEN, ip6, sizeof(ip6)) < 0)
			return 0;
		/* Extension headers are left alone: ICAP traffic carries none. */
		if (ip6[6] != IPPROTO_TCP)
			return 0;
		total = (__u32)ip6[4] << 8 | ip6[5];
		l4 = ETH_HLEN + 40;
		key->family = AF_INET6;
		__builtin_memcpy(&key->client, ip6 + 8, 16);
		__builtin_memcpy(&key->server, ip6 + 24, 16);
	} else {
		return 0;
	}
	if (load_header(skb, l4, tcp, sizeof(tcp)) < 0)
		return 0;
	sport = (__u16)tcp[0] << 8 | tcp[1];
	dport = (__u16)tcp[2] << 8 | tcp[3];
	if (watched(dport)) {
		*dir = DIR_TO_SERVER;
		key->client_port = sport;
		key->server_port = dport;
	} else if (watched(sport)) {
		__u8 tmp[16];

		*dir = DIR_TO_CLIENT;
		__builtin_memcpy(tmp, key->client, 16);
		__builtin_memcpy(key->client, key->server, 16);
		__builtin_memcpy(key->server, tmp, 16);
		key->client_port = dport;
		key->server_port = sport;
	} else {
		return 0;
	}
	count(CNT_WATCHED);
	s->seq = (__u32)tcp[4] << 24 | (__u32)tcp[5] << 16 | (__u32)tcp[6] << 8 | tcp[7];
	s->ack = (__u32)tcp[8] << 24 | (__u32)tcp[9] << 16 | (__u32)tcp[10] << 8 | tcp[11];
	s->flags = tcp[13];
	s->payload = l4 + (tcp[12] >> 4) * 4;
	if ((tcp[12] >> 4) < 5 || total < (__u32)(tcp[12] >> 4) * 4)
		return -1;
	s->len = total - (tcp[12] >> 4) * 4;
	if (s->len >= 5) {
		if (bpf_skb_load_bytes(skb, s->payload, s->rec, 5) == 0)
			s->have = 5;
	} else if (s->len >= 1) {
		if (bpf_skb_load_bytes(skb, s->payload, s->rec, 1) == 0)
			s->have = 1;
	}
	return 1;
}

static __always_inline int classify(struct __sk_buff *skb, __u8 hook)
{
	struct flow_key key = {};
	struct segment s = {};
	struct scratch *sc;
	struct flow *f;
	struct event *ev;
	__u64 now, start_ns;
	__u32 owner;
	__u8 dir = 0, bit, other;
	int ret;

	ret = parse(skb, &key, &s, &dir);
	if (ret <= 0) {
		if (ret < 0)
			count(CNT_MALFORMED);
		return TC_ACT_UNSPEC;
	}
	sc = get_scratch();
	if (!sc)
		return TC_ACT_UNSPEC;
	ev = &sc->ev;
	now = bpf_ktime_get_ns();

	f = bpf_map_lookup_elem(&flows, &key);
	if (!f) {
		__builtin_memset(&sc->fl, 0, sizeof(sc->fl));
		sc->fl.midstream = !(s.flags & TH_SYN);
		if (bpf_map_update_elem(&flows, &key, &sc->fl, BPF_NOEXIST) == 0)
			count(CNT_FLOWS_CREATED);
		f = bpf_map_lookup_elem(&flows, &key);
		if (!f) {
			count(CNT_FLOW_FULL);
			return TC_ACT_UNSPEC;
		}
	}

	owner = ((skb->ifindex << 1) | hook) + 1;
	if (f->own[dir & 1] && f->own[dir & 1] != owner &&
	    now - f->own_ns[dir & 1] < OWNER_SILENCE_NS) {
		count(CNT_DUPLICATE);
		return TC_ACT_UNSPEC;
	}
	f->own[dir & 1] = owner;
	f->own_ns[dir & 1] = now;
	bit = 1 << (dir & 1);

	if (s.flags & TH_RST) {
		/*
		 * The server's reset to the client's SYN, before a SYN-ACK or
		 * a byte of its own, refused the connect: no connection closed.
		 */
		if (dir == DIR_TO_CLIENT && !f->midstream && !(f->known & 2))
			return TC_ACT_UNSPEC;
		/*
		 * A reset right behind a held record ends that side's stream as a
		 * FIN would: a server that closes with the peer's close_notify
		 * unread resets instead of sending its FIN. The flow stays (the
		 * socket's CLOSE or the LRU removes it), so that the reset's
		 * second sighting is known for one. A record the other side
		 * holds then, unanswered, was its close_notify too: TLS 1.3
		 * answers a close_notify with one, and this reset ends that
		 * exchange before the other side's FIN (c-icap resets with the
		 * client's close_notify unread). Each alert has its record's time.
		 */
		other = (dir & 1) ^ 1;
		if ((f->pend & bit) && f->pend_end[dir & 1] == s.seq && (f->pend & (1 << other)))
			held_close_notify(skb, f, &key, ev, other, hook, now, f->pend_end[other], 0);
		held_close_notify(skb, f, &key, ev, dir, hook, now, s.seq, s.ack);
		packet_event(ev, &key, EV_RST, dir, hook, skb->ifindex, now, s.seq, s.ack, s.len);
		ev->flags = flow_flags(f);
		emit(skb, ev);
		return TC_ACT_UNSPEC;
	}

	if (s.flags & TH_SYN) {
		if ((f->known & bit) && s.seq + 1 == f->hi[dir & 1] && !s.len) {
			packet_event(ev, &key, EV_RETRANSMIT, dir, hook, skb->ifindex, now,
				     s.seq, s.ack, s.len);
			ev->flags = flow_flags(f) | EVF_SYN;
			emit(skb, ev);
			return TC_ACT_UNSPEC;
		}
		if (dir == DIR_TO_SERVER) {
			/* A new connection, perhaps on a reused tuple: start over. */
			__builtin_memset(f, 0, sizeof(*f));
			f->own[0] = owner;
			f->own_ns[0] = now;
		}
		f->hi[dir & 1] = s.seq + 1;
		f->known |= bit;
		return TC_ACT_UNSPEC;
	}

	start_ns = now;
	if (s.len) {
		__u32 end = s.seq + s.len;

		if ((f->known & bit) && !seq_after(end, f->hi[dir & 1])) {
			packet_event(ev, &key, EV_RETRANSMIT, dir, hook, skb->ifindex, now,
				     s.seq, s.ack, s.len);
			ev->flags = flow_flags(f);
			emit(skb, ev);
			goto fin;
		}
		f->hi[dir & 1] = end;
		f->known |= bit;
		if (f->tls == TLS_UNKNOWN && is_tls_record(&s))
			f->tls = TLS_YES;
		else if (f->tls == TLS_UNKNOWN && !f->midstream)
			f->tls = TLS_NO;

		if (f->pend & bit) {
			/* The held record was data after all: the segment starts there. */
			f->pend &= ~bit;
			if (f->pend_end[dir & 1] == s.seq) {
				start_ns = f->pend_ns[dir & 1];
				s.seq -= TLS_RECORD_HEADER + TLS13_ALERT_RECORD;
				s.len += TLS_RECORD_HEADER + TLS13_ALERT_RECORD;
				s.rec[0] = TLS_APPLICATION_DATA;
				s.rec[3] = 0;
				s.rec[4] = TLS13_ALERT_RECORD;
			}
		} else if (f->tls == TLS_YES && s.len == TLS_RECORD_HEADER + TLS13_ALERT_RECORD &&
			   s.rec[0] == TLS_APPLICATION_DATA && record_len(&s) == TLS13_ALERT_RECORD) {
			/*
			 * Hold a lone 19-byte record: with a FIN or a reset right
			 * behind it, it is a close_notify.
			 */
			if (s.flags & TH_FIN) {
				packet_event(ev, &key, EV_TLS_ALERT, dir, hook, skb->ifindex, now,
					     s.seq, s.ack, s.len);
				ev->flags = flow_flags(f) | EVF_PROBABLE;
				ev->record_type = s.rec[0];
				ev->record_len = TLS13_ALERT_RECORD;
				emit(skb, ev);
				goto fin;
			}
			f->pend |= bit;
			f->pend_ns[dir & 1] = now;
			f->pend_end[dir & 1] = end;
			goto ack;
		}

		if (dir == DIR_TO_SERVER)
			client_data(skb, f, &key, &s, ev, hook, now, start_ns);
		else
			server_data(skb, f, &key, &s, ev, hook, now, start_ns);
		f->last_data_ns = now;
	}

ack:
	if (dir == DIR_TO_CLIENT && (s.flags & TH_ACK) && f->ex == EX_OPEN && !f->acked &&
	    (f->known & 1) && !seq_after(f->hi[0], s.ack)) {
		packet_event(ev, &key, EV_ACKED, dir, hook, skb->ifindex, now, f->ex_seq, s.ack, 0);
		ev->ref_ns = f->ex_start_ns;
		ev->phase = f->phase;
		ev->bytes = f->ex_bytes;
		ev->flags = flow_flags(f);
		f->acked = 1;
		f->acked_ns = now;
		emit(skb, ev);
	}

fin:
	if ((s.flags & TH_FIN) && !(f->known & (bit << 2))) {
		__u32 fin_seq = s.seq + s.len;

		f->known |= bit << 2;
		held_close_notify(skb, f, &key, ev, dir, hook, now, fin_seq, s.ack);
		packet_event(ev, &key, EV_FIN, dir, hook, skb->ifindex, now, s.seq, s.ack, s.len);
		ev->flags = flow_flags(f);
		emit(skb, ev);
	}
	return TC_ACT_UNSPEC;
}

SEC("tc")
int icapwatch_ingress(struct __sk_buff *skb)
{
	return classify(skb, HOOK_INGRESS);
}

SEC("tc")
int icapwatch_egress(struct __sk_buff *skb)
{
	return classify(skb, HOOK_EGRESS);
}

/* Tracepoints and kprobes: fields at offsets the loader found. */

static __always_inline void read_field(void *dst, __u32 size, const void *base, __u16 off)
{
	if (off != OFF_NONE)
		bpf_probe_read(dst, size, (const char *)base + off);
}

/*
 * Fills the event's tuple from the local and remote ends of a socket and
 * says whether a watched port is involved. IPv4-mapped IPv6 becomes IPv4,
 * as the classifier sees those packets.
 */
static __always_inline int socket_tuple(struct event *ev, __u16 family, const __u8 *laddr,
					const __u8 *raddr, __u16 lport, __u16 rport)
{
	const __u8 *client, *server;

	if (watched(rport)) {
		client = laddr;
		server = raddr;
		ev->client_port = lport;
		ev->server_port = rport;
	} else if (watched(lport)) {
		client = raddr;
		server = laddr;
		ev->client_port = rport;
		ev->server_port = lport;
	} else {
		return 0;
	}
	if (family == AF_INET6 && !(client[0] | client[1] | client[2] | client[3] | client[4] |
				    client[5] | client[6] | client[7] | client[8] | client[9]) &&
	    client[10] == 0xff && client[11] == 0xff) {
		family = AF_INET;
		__builtin_memcpy(ev->client, client + 12, 4);
		__builtin_memcpy(ev->server, server + 12, 4);
	} else if (family == AF_INET6) {
		__builtin_memcpy(ev->client, client, 16);
		__builtin_memcpy(ev->server, server, 16);
	} else {
		__builtin_memcpy(ev->client, client, 4);
		__builtin_memcpy(ev->server, server, 4);
	}
	ev->family = family;
	return family == AF_INET || family == AF_INET6;
}

static __always_inline void event_key(const struct event *ev, struct flow_key *key)
{
	__builtin_memcpy(key->client, ev->client, 16);
	__builtin_memcpy(key->server, ev->server, 16);
	key->client_port = ev->client_port;
	key->server_port = ev->server_port;
	key->family = ev->family;
}

/*
 * Whether an event of socket sk (its tuple and dir filled) is of a flow the
 * TC programs see. The tracepoints and kprobes see the sockets of every
 * network namespace; the TC programs only the traffic on the interfaces
 * of theirs. A socket of this namespace always counts. A socket of another
 * counts only when TC has its flow and what the socket sends came into
 * this namespace through an interface whose other end is in the socket's
 * namespace: the first hook that saw that direction, f->own[dir], is the
 * ingress of a pod's veth, and the pod's namespace is behind it. Neither a
 * namespace that uses the same addresses on its own loopback (127.0.0.1
 * in two pods) nor one that copies a watched connection's addresses and
 * ports can speak for a flow it does not carry. Without the offsets (no
 * BTF) every socket counts, as the tuple alone says.
 */
static __always_inline int netns_flow(const struct config *cfg, __u64 sk, const struct event *ev)
{
	struct flow_key key = {};
	struct flow *f;
	__u64 net = 0;
	__u32 ns = 0, own, ifindex, *peer;

	if (cfg->sk_net == OFF_NONE || cfg->net_inum == OFF_NONE || !sk)
		return 1;
	read_field(&net, 8, (void *)sk, cfg->sk_net);
	if (net)
		read_field(&ns, 4, (void *)net, cfg->net_inum);
	if (!ns || ns == cfg->netns)
		return 1;
	event_key(ev, &key);
	f = bpf_map_lookup_elem(&flows, &key);
	if (!f)
		goto other;
	own = f->own[ev->dir & 1];
	if (!own || ((own - 1) & 1) != HOOK_INGRESS)
		goto other;
	ifindex = (own - 1) >> 1;
	peer = bpf_map_lookup_elem(&peer_ns, &ifindex);
	if (peer && *peer == ns)
		return 1;
other:
	count(CNT_OTHER_NETNS);
	return 0;
}

static __always_inline void current_task(struct event *ev)
{
	ev->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
}

/*
 * Reads a tracepoint's socket identity into the event; 0 when no watched
 * port is involved. Without a family field (tcp_retransmit_skb before
 * 5.x), IPv4 shows as mapped IPv6, which socket_tuple turns back.
 */
static __always_inline int tracepoint_tuple(void *ctx, const struct tuple_offsets *o,
					    struct event *ev)
{
	__u8 laddr[16] = {}, raddr[16] = {};
	__u16 sport = 0, dport = 0, family = AF_INET6;

	read_field(&sport, 2, ctx, o->sport);
	read_field(&dport, 2, ctx, o->dport);
	if (!watched(sport) && !watched(dport))
		return 0;
	read_field(&family, 2, ctx, o->family);
	if (family == AF_INET) {
		read_field(laddr, 4, ctx, o->saddr);
		read_field(raddr, 4, ctx, o->daddr);
	} else {
		read_field(laddr, 16, ctx, o->saddr_v6);
		read_field(raddr, 16, ctx, o->daddr_v6);
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	if (!socket_tuple(ev, family, laddr, raddr, sport, dport))
		return 0;
	count(CNT_TRACEPOINT);
	ev->hook = HOOK_TRACEPOINT;
	ev->dir = watched(dport) ? DIR_TO_SERVER : DIR_TO_CLIENT;
	ev->ts_ns = bpf_ktime_get_ns();
	read_field(&ev->skaddr, 8, ctx, o->skaddr);
	return 1;
}

SEC("tracepoint/sock/inet_sock_set_state")
int icapwatch_state(void *ctx)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config_map, &zero);
	struct scratch *sc = get_scratch();
	struct owner own = {}, *known;
	struct sock_info si = {};
	struct flow_key key = {};
	__u8 protocol = 0;
	struct event *ev;
	struct flow *f;

	if (!cfg || !sc)
		return 0;
	/* protocol is __u8 on some kernels, __u16 on others: little end first. */
	read_field(&protocol, 1, ctx, cfg->ss_protocol);
	if (protocol != IPPROTO_TCP)
		return 0;
	ev = &sc->ev;
	if (!tracepoint_tuple(ctx, &cfg->ss, ev))
		return 0;
	ev->type = EV_STATE;
	read_field(&ev->old_state, 4, ctx, cfg->ss_oldstate);
	read_field(&ev->new_state, 4, ctx, cfg->ss_newstate);
	/* Only connect() runs in the owner's context (SYN_SENT). */
	if (ev->new_state == TCP_SYN_SENT) {
		current_task(ev);
		own.pid = ev->pid;
		__builtin_memcpy(own.comm, ev->comm, sizeof(own.comm));
		bpf_map_update_elem(&owners, &ev->skaddr, &own, BPF_ANY);
	} else if ((known = bpf_map_lookup_elem(&owners, &ev->skaddr))) {
		ev->pid = known->pid;
		__builtin_memcpy(ev->comm, known->comm, sizeof(ev->comm));
	}
	if (ev->new_state == TCP_CLOSE)
		bpf_map_delete_elem(&owners, &ev->skaddr);
	/*
	 * connect() enters SYN_SENT before it binds the local port, and
	 * leaves it for CLOSE without one when binding fails: a flow of port
	 * 0 would never close. The owner waits for the socket's next state,
	 * which has the port.
	 */
	if (ev->client_port == 0 || !netns_flow(cfg, ev->skaddr, ev))
		return 0;
	event_key(ev, &si.key);
	si.dir = ev->dir;
	si.state = ev->new_state;
	si.prev = ev->old_state;
	bpf_map_update_elem(&sockets, &ev->skaddr, &si, BPF_ANY);
	if (ev->new_state == TCP_CLOSE) {
		event_key(ev, &key);
		/*
		 * A socket closed with data unread, or with linger 0, reaches
		 * CLOSE before it sends its reset. When the last thing it sent
		 * is a held record, the flow stays for that reset to prove the
		 * record a close_notify; the other end's CLOSE or the LRU
		 * removes it. ev->dir is the way this socket sends.
		 */
		f = bpf_map_lookup_elem(&flows, &key);
		if ((!f || !(f->pend & (1 << (ev->dir & 1)))) && bpf_map_delete_elem(&flows, &key) == 0)
			count(CNT_FLOWS_DELETED);
	}
	emit(ctx, ev);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int icapwatch_retransmit(void *ctx)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config_map, &zero);
	struct scratch *sc = get_scratch();

	if (!cfg || !sc || !tracepoint_tuple(ctx, &cfg->rt, &sc->ev) ||
	    !netns_flow(cfg, sc->ev.skaddr, &sc->ev))
		return 0;
	sc->ev.type = EV_TCP_RETRANSMIT;
	emit(ctx, &sc->ev);
	return 0;
}

/*
 * Optional kprobes: the moments the application writes and reads. The
 * socket's ports, family and addresses come from struct sock_common at
 * offsets taken from the kernel's BTF; the loader leaves the programs out
 * where it has none.
 */
/*
 * A write on a watched socket in CLOSE failed (err: its errno, 0 where
 * not known): a pooled connection the server reset, written on later.
 * The socket has given its local port back by then (inet_put_port), so
 * its flow comes from the state tracepoint's map by the socket's address.
 */
static __always_inline int failed_write(void *ctx, __u64 sk, __u8 hook, __u32 err)
{
	struct sock_info *si = bpf_map_lookup_elem(&sockets, &sk);
	struct scratch *sc;
	struct event *ev;

	if (!si || si->state != TCP_CLOSE)
		return 0;
	sc = get_scratch();
	if (!sc)
		return 0;
	ev = &sc->ev;
	__builtin_memset(ev, 0, sizeof(*ev));
	__builtin_memcpy(ev->client, si->key.client, 16);
	__builtin_memcpy(ev->server, si->key.server, 16);
	ev->client_port = si->key.client_port;
	ev->server_port = si->key.server_port;
	ev->family = si->key.family;
	ev->dir = si->dir;
	ev->old_state = si->prev;
	ev->new_state = si->state;
	count(hook == HOOK_KPROBE ? CNT_KPROBE : CNT_TRACEPOINT);
	ev->type = EV_APP_WRITE_FAILED;
	ev->hook = hook;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->skaddr = sk;
	ev->len = err;
	/* A send runs in the writer's context. */
	current_task(ev);
	emit(ctx, ev);
	return 0;
}

static __always_inline int app_event(void *ctx, __u8 type)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config_map, &zero);
	struct scratch *sc = get_scratch();
	__u8 laddr[16] = {}, raddr[16] = {};
	__u16 lport = 0, rport = 0, family = 0;
	__u64 sk = 0, size = 0;
	struct event *ev;

	if (!cfg || !sc || cfg->kp_arg1 == OFF_NONE)
		return 0;
	read_field(&sk, 8, ctx, cfg->kp_arg1);
	if (!sk)
		return 0;
	read_field(&lport, 2, (void *)sk, cfg->sk_num);
	read_field(&rport, 2, (void *)sk, cfg->sk_dport);
	rport = bpf_ntohs(rport);
	if (!watched(lport) && !watched(rport))
		return 0;
	/* sendmsg(sk, msg, size) and cleanup_rbuf(sk, copied). */
	read_field(&size, type == EV_APP_WRITE ? 8 : 4, ctx,
		   type == EV_APP_WRITE ? cfg->kp_arg3 : cfg->kp_arg2);
	if (type == EV_APP_READ && (__s32)size <= 0)
		return 0;
	if (type == EV_APP_WRITE) {
		__u8 state = 0;

		/*
		 * A write on a socket in CLOSE fails before it sends anything
		 * (tcp_sendmsg_locked: the error the reset left, or EPIPE).
		 * sock:sock_send_length reports it with its result where the
		 * loader attached it.
		 */
		read_field(&state, 1, (void *)sk, cfg->sk_state);
		if (state == TCP_CLOSE) {
			if (cfg->sl_ret != OFF_NONE)
				return 0;
			/* The errno is not known yet, at the call. */
			return failed_write(ctx, sk, HOOK_KPROBE, 0);
		}
	}
	read_field(&family, 2, (void *)sk, cfg->sk_family);
	if (family == AF_INET) {
		read_field(laddr, 4, (void *)sk, cfg->sk_rcv_saddr);
		read_field(raddr, 4, (void *)sk, cfg->sk_daddr);
	} else {
		read_field(laddr, 16, (void *)sk, cfg->sk_v6_rcv_saddr);
		read_field(raddr, 16, (void *)sk, cfg->sk_v6_daddr);
	}
	ev = &sc->ev;
	__builtin_memset(ev, 0, sizeof(*ev));
	if (!socket_tuple(ev, family, laddr, raddr, lport, rport))
		return 0;
	count(CNT_KPROBE);
	ev->type = type;
	ev->hook = HOOK_KPROBE;
	ev->dir = watched(rport) ? DIR_TO_SERVER : DIR_TO_CLIENT;
	if (!netns_flow(cfg, sk, ev))
		return 0;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->skaddr = sk;
	ev->len = (__u32)size;
	current_task(ev);
	emit(ctx, ev);
	return 0;
}

SEC("kprobe/tcp_sendmsg")
int icapwatch_sendmsg(void *ctx)
{
	return app_event(ctx, EV_APP_WRITE);
}

SEC("kprobe/tcp_cleanup_rbuf")
int icapwatch_cleanup_rbuf(void *ctx)
{
	return app_event(ctx, EV_APP_READ);
}

/*
 * Optional tracepoint sock:sock_send_length (6.x): the result of every
 * send on a socket. Only failures on a watched socket in CLOSE are
 * reported: the socket is known by its address from the state
 * tracepoint, as this one gives no tuple.
 */
SEC("tracepoint/sock/sock_send_length")
int icapwatch_send_length(void *ctx)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config_map, &zero);
	__u16 protocol = 0;
	__u64 sk = 0;
	__s32 ret = 0;

	if (!cfg || cfg->sl_ret == OFF_NONE)
		return 0;
	read_field(&ret, 4, ctx, cfg->sl_ret);
	if (ret >= 0)
		return 0;
	read_field(&protocol, 2, ctx, cfg->sl_protocol);
	if (protocol != IPPROTO_TCP)
		return 0;
	read_field(&sk, 8, ctx, cfg->sl_sk);
	return failed_write(ctx, sk, HOOK_TRACEPOINT, (__u32)-ret);
}

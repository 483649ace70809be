/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types shared by the icapwatch programs and, through bpf2go's -type, the
 * Go loader. Every layout here is ours: the kernel's own structures are
 * never read at fixed offsets (see struct config).
 */
#ifndef ICAPWATCH_H
#define ICAPWATCH_H

#include <linux/types.h>

/* What an event says. Values are part of the loader's decoding. */
enum event_type {
	EV_EXCHANGE_START = 1, /* the client spoke first after the server, or first */
	EV_ACKED = 2,          /* the server's TCP ACKed every request byte */
	EV_ANSWER = 3,         /* the server's first byte after a request */
	EV_TLS_ALERT = 4,      /* a TLS alert record (or TLS 1.3 close_notify, probable) */
	EV_FIN = 5,
	EV_RST = 6,
	EV_RETRANSMIT = 7,     /* a data segment (or SYN) seen again on the wire */
	EV_STATE = 8,          /* sock:inet_sock_set_state on a watched port */
	EV_TCP_RETRANSMIT = 9, /* tcp:tcp_retransmit_skb on a watched port */
	EV_APP_WRITE = 10,     /* kprobe tcp_sendmsg */
	EV_APP_READ = 11,      /* kprobe tcp_cleanup_rbuf */
	/*
	 * The application's write failed on a socket in CLOSE (reset, or gone
	 * after its FINs): nothing reaches the wire. From sock:sock_send_length
	 * (ret < 0, len holds the errno), else the kprobe tcp_sendmsg at entry
	 * (len 0). old_state is the socket's state before CLOSE where known.
	 * 12 to 16 are user-space kinds of agent/observe.
	 */
	EV_APP_WRITE_FAILED = 17,
};

/* Bits of event.flags. */
enum event_flag {
	EVF_PROBABLE = 1 << 0,      /* TLS 1.3 close_notify by the 19-byte rule */
	EVF_OPEN_EXCHANGE = 1 << 1, /* FIN/RST/alert while an exchange was open */
	EVF_MAYBE_TICKET = 1 << 2,  /* first server application data after TLS 1.3 handshake */
	EVF_AFTER_TICKET = 1 << 3,  /* the next server record after a MAYBE_TICKET answer */
	EVF_MIDSTREAM = 1 << 4,     /* the flow was first seen after its SYN */
	EVF_SYN = 1 << 5,           /* retransmit: a SYN seen again */
	EVF_TLS13 = 1 << 6,         /* the flow negotiated TLS 1.3 (cipher suite 0x13xx) */
	EVF_PLAIN = 1 << 7,         /* the flow does not start with a TLS record */
};

enum direction {
	DIR_TO_SERVER = 0, /* client -> server: the request side */
	DIR_TO_CLIENT = 1, /* server -> client: the answer side */
};

enum hook {
	HOOK_INGRESS = 0,
	HOOK_EGRESS = 1,
	HOOK_TRACEPOINT = 2,
	HOOK_KPROBE = 3,
};

enum phase {
	PHASE_NONE = 0,
	PHASE_HANDSHAKE = 1,
	PHASE_REQUEST = 2,
};

/*
 * Per-CPU counters, read and summed by the loader. Nothing is counted
 * before the port check: a counter bumped for every packet of the host
 * cost more than the rest of an unwatched packet's way through.
 */
enum counter {
	CNT_WATCHED = 0,       /* TCP on a watched port */
	CNT_DUPLICATE = 1,     /* the same packet seen at a second hook */
	CNT_MALFORMED = 2,     /* headers that did not parse */
	CNT_FLOWS_CREATED = 3,
	CNT_FLOWS_DELETED = 4,
	CNT_FLOW_FULL = 5,     /* could not insert a flow */
	CNT_EVENTS = 6,        /* events handed to the output buffer */
	CNT_EVENTS_LOST = 7,   /* the output buffer refused an event */
	CNT_TRACEPOINT = 8,    /* tracepoint hits on watched ports */
	CNT_KPROBE = 9,        /* kprobe hits on watched ports */
	CNT_OTHER_NETNS = 10,  /* socket events dropped: another namespace's flow */
	CNT_MAX = 11,
};

/*
 * One event. Addresses are normalized to the ICAP roles: client is the side
 * that connects to the watched port, server owns it. IPv4 (and IPv4-mapped
 * IPv6) addresses use the first four bytes with family 2.
 */
struct event {
	__u64 ts_ns;  /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
	__u64 ref_ns; /* related time: exchange start, previous activity, deferred record */
	__u64 skaddr; /* struct sock pointer (tracepoints, kprobes): joins their events */
	__u8 client[16];
	__u8 server[16];
	__u16 client_port;
	__u16 server_port;
	__u8 family; /* AF_INET (2) or AF_INET6 (10) */
	__u8 type;   /* enum event_type */
	__u8 dir;    /* enum direction */
	__u8 hook;   /* enum hook */
	__u32 flags; /* enum event_flag bits */
	__u32 ifindex;
	__u32 seq;   /* TCP sequence of the segment (or of the exchange's first byte) */
	__u32 ack;
	__u32 len;   /* payload bytes of the segment; app bytes for kprobes */
	__u32 bytes; /* request bytes of the exchange so far */
	__u8 record_type; /* first byte of the payload: TLS content type */
	__u8 phase;       /* enum phase */
	__u16 record_len; /* TLS record length at segment start */
	__s32 old_state;  /* TCP states for EV_STATE */
	__s32 new_state;
	__u32 pid;        /* tgid of the current task where it is the socket's owner */
	char comm[16];
};

/*
 * Load-time settings, one entry of an array map, so that the objects need
 * no global data sections (4.18 has none). Offsets are bytes from the
 * start of the tracepoint record, of struct pt_regs or of struct
 * sock_common, as the running kernel's tracefs and BTF give them;
 * OFF_NONE marks a field this kernel does not have.
 */
#define OFF_NONE 0xffff

/* Where a tracepoint record holds a socket's identity. */
struct tuple_offsets {
	__u16 skaddr;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 saddr;
	__u16 daddr;
	__u16 saddr_v6;
	__u16 daddr_v6;
};

struct config {
	struct tuple_offsets ss; /* sock:inet_sock_set_state */
	__u16 ss_oldstate;
	__u16 ss_newstate;
	__u16 ss_protocol;
	struct tuple_offsets rt; /* tcp:tcp_retransmit_skb */
	/* sock:sock_send_length (6.x), optional: OFF_NONE where it is missing */
	__u16 sl_sk;
	__u16 sl_protocol;
	__u16 sl_ret;
	/* kprobes: the first three arguments in struct pt_regs */
	__u16 kp_arg1;
	__u16 kp_arg2;
	__u16 kp_arg3;
	/* struct sock_common, from the kernel's BTF */
	__u16 sk_daddr;
	__u16 sk_rcv_saddr;
	__u16 sk_dport;
	__u16 sk_num;
	__u16 sk_family;
	__u16 sk_v6_daddr;
	__u16 sk_v6_rcv_saddr;
	__u16 sk_state;
	/*
	 * A socket's network namespace: struct sock_common's skc_net (a
	 * struct net pointer) and struct net's ns.inum, from the kernel's
	 * BTF; OFF_NONE where it has none. netns is the inode of the
	 * namespace the TC programs watch, the loader's own.
	 */
	__u16 sk_net;
	__u16 net_inum;
	__u32 netns;
};

#endif

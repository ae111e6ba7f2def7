/* live_gen: a C AF_PACKET traffic generator for the live-forward bench (issue 6).
 *
 * Role. Offers 60-byte IPv4/UDP frames on one interface as fast as one CPU can
 * push them, for a fixed time, so that what a forwarder (the kernel, nftables,
 * Portico) delivers is limited by the forwarder and not by a Python sender.
 * bench/live_forward.py compiles it at bench time (gcc -O2, a temporary
 * directory) and runs it inside the lab's client namespace.
 *
 * Theory of operation. All frames are built once before the clock starts:
 * FLOWS frames that differ only in their UDP source port (SPORT .. SPORT +
 * FLOWS - 1) and in the IP id, with correct IPv4 and UDP checksums, so NAT
 * and flow caches see FLOWS distinct 5-tuples, as from real hosts. The send
 * loop hands BATCH of them at a time to the kernel with one sendmmsg on a
 * packet socket bound to the interface; the socket is opened with protocol 0
 * (it receives nothing) and PACKET_QDISC_BYPASS (veth has no queue to go
 * through anyway). On a veth pair each frame's trip into the peer happens
 * inside this call, so "sent" is what the peer was offered: a frame the peer
 * side drops (a full ring or backlog) still counts as sent here, and the
 * bench computes the loss from the receiver's counter. ENOBUFS (the device
 * pushed back: a veth receiving through NAPI does when its ring is full) is
 * counted ("errors") and the call retried after a sched_yield.
 *
 * The process pins itself to CPU (sched_setaffinity) before building frames,
 * so the clock measures sending on that core only. The loop is bounded by
 * SECONDS (the clock is read once a batch) and by COUNT when given.
 *
 * Usage: live_gen -i IFACE -d DST_MAC -s SRC_MAC -S SRC_IP -D DST_IP
 *                 [-p DPORT] [-P SPORT] [-f FLOWS] [-t SECONDS] [-n COUNT]
 *                 [-b BATCH] [-c CPU]
 * Prints one JSON line: {"sent": N, "errors": E, "seconds": S, "pps": R, ...}.
 * Exit status 2 on bad usage, 1 when the socket cannot be set up or a send
 * fails for any reason but ENOBUFS.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME_LEN 60 /* Ethernet header + IPv4 + UDP + 18 bytes, no FCS */
#define MAX_BATCH 1024
#define MAX_FLOWS 65536
#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_mac(const char *text, uint8_t mac[6]) {
    unsigned int b[6];
    if (sscanf(text, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
        return -1;
    for (int i = 0; i < 6; i++) {
        if (b[i] > 0xff)
            return -1;
        mac[i] = (uint8_t)b[i];
    }
    return 0;
}

/* One's complement sum of 16-bit big-endian words, folded later. */
static uint32_t sum16(const uint8_t *data, size_t len, uint32_t sum) {
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)(data[i] << 8 | data[i + 1]);
    if (len & 1)
        sum += (uint32_t)(data[len - 1] << 8);
    return sum;
}

static uint16_t fold(uint32_t sum) {
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void build(uint8_t *f, const uint8_t dst[6], const uint8_t src[6], uint32_t sip,
                  uint32_t dip, uint16_t sport, uint16_t dport, uint16_t ip_id) {
    memset(f, 0, FRAME_LEN);
    memcpy(f, dst, 6);
    memcpy(f + 6, src, 6);
    f[12] = 0x08; /* IPv4 */
    uint8_t *ip = f + 14, *udp = ip + 20;
    uint16_t udp_len = FRAME_LEN - 14 - 20;
    ip[0] = 0x45;
    ip[2] = (uint8_t)((20 + udp_len) >> 8);
    ip[3] = (uint8_t)(20 + udp_len);
    ip[4] = (uint8_t)(ip_id >> 8);
    ip[5] = (uint8_t)ip_id;
    ip[8] = 64; /* TTL */
    ip[9] = 17; /* UDP */
    memcpy(ip + 12, &sip, 4); /* both already in network order */
    memcpy(ip + 16, &dip, 4);
    uint16_t ip_sum = fold(sum16(ip, 20, 0));
    ip[10] = (uint8_t)(ip_sum >> 8);
    ip[11] = (uint8_t)ip_sum;
    udp[0] = (uint8_t)(sport >> 8);
    udp[1] = (uint8_t)sport;
    udp[2] = (uint8_t)(dport >> 8);
    udp[3] = (uint8_t)dport;
    udp[4] = (uint8_t)(udp_len >> 8);
    udp[5] = (uint8_t)udp_len;
    memcpy(udp + 8, "portico-live-fwd!!", 18);
    /* The pseudo-header (addresses, protocol, length), then the datagram. */
    uint32_t sum = sum16(ip + 12, 8, 0) + 17 + udp_len;
    uint16_t udp_sum = fold(sum16(udp, udp_len, sum));
    if (udp_sum == 0)
        udp_sum = 0xffff; /* 0 means "no checksum" in IPv4 UDP */
    udp[6] = (uint8_t)(udp_sum >> 8);
    udp[7] = (uint8_t)udp_sum;
}

static void usage(void) {
    fprintf(stderr, "usage: live_gen -i IFACE -d DST_MAC -s SRC_MAC -S SRC_IP -D DST_IP "
                    "[-p DPORT] [-P SPORT] [-f FLOWS] [-t SECONDS] [-n COUNT] [-b BATCH] "
                    "[-c CPU]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *iface = NULL, *dst_text = NULL, *src_text = NULL;
    const char *sip_text = NULL, *dip_text = NULL;
    long dport = 9, sport = 10000, flows = 1024, batch = 256, cpu = -1;
    long long count = 0;
    double seconds = 1.0;
    int opt;
    while ((opt = getopt(argc, argv, "i:d:s:S:D:p:P:f:t:n:b:c:")) != -1) {
        switch (opt) {
        case 'i': iface = optarg; break;
        case 'd': dst_text = optarg; break;
        case 's': src_text = optarg; break;
        case 'S': sip_text = optarg; break;
        case 'D': dip_text = optarg; break;
        case 'p': dport = strtol(optarg, NULL, 10); break;
        case 'P': sport = strtol(optarg, NULL, 10); break;
        case 'f': flows = strtol(optarg, NULL, 10); break;
        case 't': seconds = strtod(optarg, NULL); break;
        case 'n': count = strtoll(optarg, NULL, 10); break;
        case 'b': batch = strtol(optarg, NULL, 10); break;
        case 'c': cpu = strtol(optarg, NULL, 10); break;
        default: usage();
        }
    }
    uint8_t dst[6], src[6];
    struct in_addr sip, dip;
    if (!iface || !dst_text || !src_text || !sip_text || !dip_text || parse_mac(dst_text, dst) ||
        parse_mac(src_text, src) || inet_pton(AF_INET, sip_text, &sip) != 1 ||
        inet_pton(AF_INET, dip_text, &dip) != 1 || dport < 1 || dport > 65535 || flows < 1 ||
        flows > MAX_FLOWS || sport < 1 || sport + flows - 1 > 65535 || batch < 1 ||
        batch > MAX_BATCH || !(seconds > 0 && seconds <= 3600) || count < 0)
        usage();

    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((int)cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0) {
            fprintf(stderr, "live_gen: sched_setaffinity(%ld): %s\n", cpu, strerror(errno));
            return 1;
        }
    }

    int fd = socket(AF_PACKET, SOCK_RAW, 0); /* protocol 0: this socket receives nothing */
    if (fd < 0) {
        fprintf(stderr, "live_gen: socket: %s\n", strerror(errno));
        return 1;
    }
    int one = 1, sndbuf = 4 << 20;
    /* Failing these only costs speed. */
    (void)setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf);
    struct sockaddr_ll where = {0};
    where.sll_family = AF_PACKET;
    where.sll_ifindex = (int)if_nametoindex(iface);
    if (where.sll_ifindex == 0) {
        fprintf(stderr, "live_gen: no interface %s: %s\n", iface, strerror(errno));
        return 1;
    }
    if (bind(fd, (struct sockaddr *)&where, sizeof where) != 0) {
        fprintf(stderr, "live_gen: bind %s: %s\n", iface, strerror(errno));
        return 1;
    }

    static uint8_t frames[MAX_FLOWS][FRAME_LEN];
    for (long k = 0; k < flows; k++)
        build(frames[k], dst, src, sip.s_addr, dip.s_addr, (uint16_t)(sport + k),
              (uint16_t)dport, (uint16_t)k);
    /* The messages of a batch point at consecutive flows; the window moves on by
     * BATCH each call, so every flow is sent in turn. Rebuilt per call: cheap. */
    static struct mmsghdr msgs[MAX_BATCH];
    static struct iovec iovs[MAX_BATCH];

    long long sent = 0, errors = 0, calls = 0;
    long cursor = 0;
    double began = now(), ended = began, end = began + seconds;
    while (ended < end && (count == 0 || sent < count)) {
        long n = batch;
        if (count && count - sent < n)
            n = (long)(count - sent);
        for (long k = 0; k < n; k++) {
            iovs[k].iov_base = frames[(cursor + k) % flows];
            iovs[k].iov_len = FRAME_LEN;
            memset(&msgs[k].msg_hdr, 0, sizeof msgs[k].msg_hdr);
            msgs[k].msg_hdr.msg_iov = &iovs[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
        }
        int done = sendmmsg(fd, msgs, (unsigned int)n, 0);
        calls++;
        if (done < 0) {
            if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) {
                errors++;
                sched_yield();
            } else {
                fprintf(stderr, "live_gen: sendmmsg: %s\n", strerror(errno));
                return 1;
            }
        } else {
            sent += done;
            cursor = (cursor + done) % flows;
        }
        ended = now();
    }
    double took = ended - began;
    printf("{\"sent\": %lld, \"errors\": %lld, \"calls\": %lld, \"seconds\": %.6f, "
           "\"pps\": %.0f, \"flows\": %ld, \"frame_bytes\": %d, \"batch\": %ld, \"cpu\": %ld}\n",
           sent, errors, calls, took, took > 0 ? (double)sent / took : 0.0, flows, FRAME_LEN,
           batch, cpu);
    close(fd);
    return 0;
}

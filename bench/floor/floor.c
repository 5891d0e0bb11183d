/*
 * The ext_authz floor: a do-nothing external authorization service in C, for bench/run.py.
 *
 *     bench/floor/floor http|grpc PORT
 *
 * It allows every check without looking at it, so what a scenario costs through Envoy on top
 * of this is the cost of the service's own work and of the language it is written in, not of
 * Envoy's ext_authz hop (which no external service can avoid). A benchmark reference only:
 * never shipped, never part of `make test`; `make bench` builds it with the system compiler.
 *
 *   http  HTTP/1.1 keep-alive, as Envoy's `http_service` speaks it: read the request line,
 *         the headers and `content-length` bytes of body, answer `200` with no body.
 *   grpc  HTTP/2 (nghttp2) with gRPC framing: `Authorization/Check` gets a CheckResponse
 *         with status OK, `grpc.health.v1.Health/Check` gets SERVING (what bench/run.py's
 *         readiness probe and an Envoy health check ask), any other method UNIMPLEMENTED.
 *         The two replies are serialised by hand: they are two bytes each.
 *
 * One thread, one epoll loop, level-triggered, non-blocking sockets on 127.0.0.1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_EVENTS 64
#define READ_CHUNK 65536
/* Envoy's bench configs cap the body at 1 MiB (with_request_body.max_request_bytes). */
#define MAX_HTTP_REQUEST (1 << 21)

/* A growable byte buffer: unparsed input (HTTP) or unsent output (both). */
typedef struct {
    uint8_t *data;
    size_t len, cap;
} buffer;

typedef struct {
    int fd;
    int want_write; /* EPOLLOUT registered: output is waiting for the socket */
    buffer in, out;
    nghttp2_session *h2; /* grpc mode only */
} conn;

static int epfd;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void append(buffer *b, const void *data, size_t len) {
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len) cap *= 2;
        b->data = realloc(b->data, cap);
        if (b->data == NULL) die("realloc");
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void consume(buffer *b, size_t n) {
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

static void close_conn(conn *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->h2) nghttp2_session_del(c->h2);
    free(c->in.data);
    free(c->out.data);
    free(c);
}

static void watch(conn *c, int write) {
    struct epoll_event ev = {.events = EPOLLIN | (write ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_write = write;
}

/* Writes what the socket takes; returns -1 when the peer is gone. */
static int flush(conn *c) {
    while (c->out.len > 0) {
        ssize_t n = write(c->fd, c->out.data, c->out.len);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        consume(&c->out, (size_t)n);
    }
    int pending = c->out.len > 0;
    if (pending != c->want_write) watch(c, pending);
    return 0;
}

/* --- HTTP/1.1 ---------------------------------------------------------------------------- */

static const char HTTP_OK[] = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

/* The value of `content-length` in the header block [start, end), or -1 when there is none
 * (Envoy sends one with every buffered check; chunked bodies are not expected). */
static long content_length(const char *start, const char *end) {
    const char name[] = "content-length:";
    for (const char *line = start; line < end;) {
        const char *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (eol == NULL) eol = end;
        if ((size_t)(eol - line) > sizeof name - 1 && strncasecmp(line, name, sizeof name - 1) == 0)
            return strtol(line + sizeof name - 1, NULL, 10);
        line = eol + 2;
    }
    return -1;
}

/* Answers every whole request in the input; returns -1 on a request we cannot frame. */
static int http_requests(conn *c) {
    for (;;) {
        const char *head = (const char *)c->in.data;
        const char *blank = memmem(head, c->in.len, "\r\n\r\n", 4);
        if (blank == NULL) return c->in.len > MAX_HTTP_REQUEST ? -1 : 0;
        long body = content_length(head, blank + 2);
        if (body < 0) body = 0;
        size_t whole = (size_t)(blank - head) + 4 + (size_t)body;
        if (whole > MAX_HTTP_REQUEST) return -1;
        if (c->in.len < whole) return 0;
        consume(&c->in, whole);
        append(&c->out, HTTP_OK, sizeof HTTP_OK - 1);
    }
}

/* --- gRPC over HTTP/2 -------------------------------------------------------------------- */

/* gRPC messages: a 5-byte prefix (not compressed, big-endian length) and the protobuf.
 * CheckResponse{status: Status{code: OK}}: field 1, length-delimited, empty (code 0 is the
 * default, so Status serialises to nothing). HealthCheckResponse{status: SERVING}: field 1,
 * varint 1. */
static const uint8_t CHECK_OK[] = {0, 0, 0, 0, 2, 0x0a, 0x00};
static const uint8_t HEALTH_SERVING[] = {0, 0, 0, 0, 2, 0x08, 0x01};

typedef struct {
    const uint8_t *reply; /* NULL: unknown method, answered UNIMPLEMENTED in trailers */
    size_t len, sent;
} stream;

#define NV(name, value)                                                              \
    {                                                                                \
        (uint8_t *)(name), (uint8_t *)(value), sizeof(name) - 1, sizeof(value) - 1, \
            NGHTTP2_NV_FLAG_NONE                                                     \
    }

static ssize_t read_reply(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                          uint32_t *flags, nghttp2_data_source *source, void *user) {
    (void)user;
    stream *s = source->ptr;
    size_t n = s->len - s->sent < length ? s->len - s->sent : length;
    if (n) memcpy(buf, s->reply + s->sent, n);
    s->sent += n;
    if (s->sent == s->len) {
        /* The stream ends with the trailers, not with the data. */
        *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        nghttp2_nv ok[] = {NV("grpc-status", "0")};
        nghttp2_nv unimplemented[] = {NV("grpc-status", "12")};
        if (nghttp2_submit_trailer(session, id, s->reply ? ok : unimplemented, 1) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return (ssize_t)n;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
    (void)user;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    stream *s = calloc(1, sizeof *s);
    if (s == NULL) die("calloc");
    return nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s);
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user) {
    (void)flags, (void)user;
    stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s == NULL || namelen != 5 || memcmp(name, ":path", 5) != 0) return 0;
    static const char check[] = "/envoy.service.auth.v3.Authorization/Check";
    static const char health[] = "/grpc.health.v1.Health/Check";
    if (valuelen == sizeof check - 1 && memcmp(value, check, valuelen) == 0)
        s->reply = CHECK_OK, s->len = sizeof CHECK_OK;
    else if (valuelen == sizeof health - 1 && memcmp(value, health, valuelen) == 0)
        s->reply = HEALTH_SERVING, s->len = sizeof HEALTH_SERVING;
    return 0;
}

/* The request is whole when its END_STREAM arrives (on the last DATA or on HEADERS). */
static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
    (void)user;
    if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
    if (frame->hd.type != NGHTTP2_DATA && frame->hd.type != NGHTTP2_HEADERS) return 0;
    stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s == NULL) return 0;
    nghttp2_nv headers[] = {NV(":status", "200"), NV("content-type", "application/grpc")};
    nghttp2_data_provider body = {.source.ptr = s, .read_callback = read_reply};
    return nghttp2_submit_response(session, frame->hd.stream_id, headers, 2, &body);
}

static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t code, void *user) {
    (void)code, (void)user;
    free(nghttp2_session_get_stream_user_data(session, id));
    return 0;
}

static nghttp2_session_callbacks *callbacks(void) {
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) die("nghttp2_session_callbacks_new");
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    return cb;
}

/* Feeds the input to nghttp2 and queues what it has to say; -1 ends the connection. */
static int h2_exchange(conn *c, const uint8_t *data, size_t len) {
    if (len && nghttp2_session_mem_recv(c->h2, data, len) < 0) return -1;
    for (;;) {
        const uint8_t *frames;
        ssize_t n = nghttp2_session_mem_send(c->h2, &frames);
        if (n < 0) return -1;
        if (n == 0) break;
        append(&c->out, frames, (size_t)n);
    }
    if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2)) return -1;
    return 0;
}

/* --- the loop ---------------------------------------------------------------------------- */

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(fd, 1024) < 0) die("listen");
    return fd;
}

static void accept_all(int listener, int grpc, nghttp2_session_callbacks *cb) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) return; /* EAGAIN: none left */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = calloc(1, sizeof *c);
        if (c == NULL) die("calloc");
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
        if (grpc) {
            if (nghttp2_session_server_new(&c->h2, cb, c) != 0) die("nghttp2_session_server_new");
            /* The server's SETTINGS: nghttp2's defaults (no stream limit) suit a floor. */
            if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, NULL, 0) != 0 ||
                h2_exchange(c, NULL, 0) < 0 || flush(c) < 0)
                close_conn(c);
        }
    }
}

/* Reads what is there and answers it; returns -1 when the connection is done. */
static int serve(conn *c, int grpc) {
    uint8_t chunk[READ_CHUNK];
    ssize_t n = read(c->fd, chunk, sizeof chunk);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    if (n <= 0) return -1;
    if (grpc) {
        if (h2_exchange(c, chunk, (size_t)n) < 0) return -1;
    } else {
        append(&c->in, chunk, (size_t)n);
        if (http_requests(c) < 0) return -1;
    }
    return flush(c);
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "http") != 0 && strcmp(argv[1], "grpc") != 0)) {
        fprintf(stderr, "usage: %s http|grpc PORT\n", argv[0]);
        return 2;
    }
    int grpc = strcmp(argv[1], "grpc") == 0;
    nghttp2_session_callbacks *cb = grpc ? callbacks() : NULL;
    int listener = listen_on(atoi(argv[2]));
    epfd = epoll_create1(0);
    if (epfd < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev) < 0) die("epoll_ctl");
    fprintf(stderr, "floor: %s on 127.0.0.1:%s\n", argv[1], argv[2]);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int ready = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) die("epoll_wait");
        for (int i = 0; i < ready; i++) {
            conn *c = events[i].data.ptr;
            if (c == NULL) {
                accept_all(listener, grpc, cb);
                continue;
            }
            int gone = (events[i].events & (EPOLLERR | EPOLLHUP)) != 0;
            if (!gone && (events[i].events & EPOLLIN)) gone = serve(c, grpc) < 0;
            if (!gone && (events[i].events & EPOLLOUT)) gone = flush(c) < 0;
            if (gone) close_conn(c);
        }
    }
}

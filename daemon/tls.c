/* SPDX-License-Identifier: MIT */
/* TLS with wolfSSL: see tls.h. Built as the module mqttbridge-tls.so (tls_module.h) with
 * hidden symbols: these tls_* functions are reached through the table at the end, and the
 * daemon's own tls_* (tls_module.c) forward to it. */
#include <wolfssl/options.h> /* first: the library's build settings */

#include "tls.h"
#include "tls_module.h"

#include <assert.h>
#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <wolfssl/error-ssl.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/wc_pkcs11.h>

#include "log.h"
#include "pkcs11_uri.h"

/* A private key in a PKCS#11 token (key_file = pkcs11:...): the module, a logged-in session,
 * and the wolfCrypt device that signs with it. The key never leaves the token.
 *
 * A module is initialised once per process (C_Initialize), so there is at most one Token,
 * shared by the contexts of a reload while connections of the old one live. */
typedef struct Token {
    Pkcs11Uri uri;
    Pkcs11Dev dev;
    Pkcs11Token token;
    int dev_id; /* registered with wolfCrypt; 0: none */
    bool dev_loaded, token_open;
    unsigned refs;
    char *key_file, *module, *pin_file; /* what it was opened with */
    char pin[256];                      /* wolfSSL logs in again with it: it must stay */
} Token;

static Token *the_token;

struct TlsContext {
    WOLFSSL_CTX *ctx;
    unsigned refs; /* the daemon's, and one per connection made with it */
    Token *token;  /* NULL: the key is a file */
    /* The last established connection's session (its ticket), offered to the next
     * connection to the same name: a resumed handshake skips the certificate chain and the
     * signatures, which is most of what a reconnect costs both sides. A reload makes a new
     * context, so nothing is resumed across a change of CA, certificate or key. */
    WOLFSSL_SESSION *resume;
    char resume_name[256];
    uint64_t resume_creds; /* creds_id() of the connection that made it */
    /* When the full handshake that began this chain of resumptions verified the broker's
     * certificate: a resumed link does not look at it again, so after RESUME_MAX_S the next
     * connect is a full handshake. */
    double resume_verified_at;
};

enum { RESUME_MAX_S = 24 * 3600 };

/* wolfSSL reads a record's header and then its body, each with its own recv(): with small
 * records (an acknowledgement is one) that is two system calls per packet. It reads from
 * this buffer instead, filled with one recv() of whatever the socket holds. */
enum { READ_AHEAD = 16384 + 2048 + 5 }; /* a largest TLS 1.2 record, header included */

struct TlsConn {
    TlsContext *ctx;
    WOLFSSL *ssl;
    int fd;
    bool has_cert;
    bool established; /* the handshake completed: its session is worth keeping */
    char name[256];   /* the broker's name (SNI, certificate check, resumption) */
    uint64_t creds;   /* creds_id() of the certificate it presents */
    bool ticket;      /* the broker sent a ticket on this connection */
    bool offered;     /* the kept session was offered in its handshake */
    double started;   /* mono_s() when it was made */
    uint8_t *ahead;   /* READ_AHEAD bytes */
    size_t ahead_off, ahead_len;
    char error[300];
};

static void init_once(void)
{
    static bool done;
    if (!done) {
        wolfSSL_Init();
        done = true;
    }
}

static bool set(const char *s)
{
    return s && *s;
}

/* A context with everything of [tls]; NULL and a message on failure. */
static WOLFSSL_CTX *make_ctx(const Config *cfg, char *err, size_t errlen)
{
    init_once();
    const __typeof__(cfg->tls) *t = &cfg->tls;
    WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
    if (!ctx) {
        snprintf(err, errlen, "TLS: out of memory");
        return NULL;
    }
    wolfSSL_CTX_SetMinVersion(ctx, t->min_version == 13 ? WOLFSSL_TLSV1_3 : WOLFSSL_TLSV1_2);
    if (t->verify) {
        wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER, NULL);
        int r;
        const char *what;
        if (set(t->ca_file) || set(t->ca_path)) {
            r = wolfSSL_CTX_load_verify_locations(ctx, set(t->ca_file) ? t->ca_file : NULL,
                                                  set(t->ca_path) ? t->ca_path : NULL);
            what = set(t->ca_file) ? t->ca_file : t->ca_path;
        } else {
            r = wolfSSL_CTX_load_system_CA_certs(ctx);
            what = "the system CA store";
        }
        if (r != WOLFSSL_SUCCESS) {
            snprintf(err, errlen, "TLS: cannot load CA certificates from %s", what);
            wolfSSL_CTX_free(ctx);
            return NULL;
        }
    } else {
        wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
    }
    return ctx;
}

/* The client certificate and key, read for each connection: two small files, so that
 * certificates rotated on disk are used at the next connect without a reload. A key in a
 * token is named, and checked against the certificate by a signature the token makes. */
static int load_client_cert(WOLFSSL *ssl, const TlsContext *c, const Config *cfg, char *err,
                            size_t errlen)
{
    const __typeof__(cfg->tls) *t = &cfg->tls;
    if (!set(t->cert_file)) {
        return 0;
    }
    if (wolfSSL_use_certificate_chain_file(ssl, t->cert_file) != WOLFSSL_SUCCESS) {
        snprintf(err, errlen, "TLS: cannot load the client certificate %s (PEM expected)",
                 t->cert_file);
        return -EINVAL;
    }
    if (c->token) {
        const Token *k = c->token;
        int r = k->uri.object[0]
                    ? wolfSSL_use_PrivateKey_Label(ssl, k->uri.object, k->dev_id)
                    : wolfSSL_use_PrivateKey_Id(ssl, k->uri.id, (long)k->uri.id_len, k->dev_id);
        if (r != WOLFSSL_SUCCESS || wolfSSL_check_private_key(ssl) != WOLFSSL_SUCCESS) {
            snprintf(err, errlen,
                     "TLS: the token has no private key %s matching %s (object or id wrong?)",
                     t->key_file, t->cert_file);
            return -EINVAL;
        }
        return 0;
    }
    if (wolfSSL_use_PrivateKey_file(ssl, t->key_file, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS ||
        wolfSSL_check_private_key(ssl) != WOLFSSL_SUCCESS) {
        snprintf(err, errlen, "TLS: cannot load the private key %s (PEM expected, matching %s)",
                 t->key_file, t->cert_file);
        return -EINVAL;
    }
    return 0;
}

static void close_token(Token *k)
{
    if (!k || --k->refs > 0) {
        return;
    }
    assert(k == the_token);
    the_token = NULL;
    if (k->dev_id) {
        wc_CryptoCb_UnRegisterDevice(k->dev_id);
    }
    if (k->token_open) {
        wc_Pkcs11Token_Close(&k->token);
    }
    if (k->dev_loaded) {
        wc_Pkcs11Token_Final(&k->token);
        wc_Pkcs11_Finalize(&k->dev);
    }
    explicit_bzero(k->pin, sizeof(k->pin));
    free(k->key_file);
    free(k->module);
    free(k->pin_file);
    free(k);
}

/* The first line of the PIN file (its privacy is checked with the other secrets). */
static int read_pin(const char *path, char *pin, size_t n, char *err, size_t errlen)
{
    pin[0] = 0;
    if (!set(path)) {
        return 0; /* a token without a PIN */
    }
    FILE *f = fopen(path, "re");
    if (!f || !fgets(pin, (int)n, f)) {
        snprintf(err, errlen, "TLS: cannot read tls.pin_file %s: %s", path,
                 f ? "it is empty" : strerror(errno));
        if (f) {
            (void)fclose(f); /* read only */
        }
        return -EINVAL;
    }
    (void)fclose(f); /* read only */
    size_t len = strcspn(pin, "\r\n");
    if (len + 1 >= n) {
        explicit_bzero(pin, n);
        snprintf(err, errlen, "TLS: the PIN in tls.pin_file %s is longer than %zu bytes", path,
                 n - 2);
        return -EINVAL;
    }
    pin[len] = 0;
    return 0;
}

/* The slot holding the token labelled `label` (the first with a token for ""). */
static int find_slot(const Pkcs11Dev *dev, const char *label, CK_SLOT_ID *ret)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    if (dev->func->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) {
        return -ENOENT;
    }
    size_t len = strlen(label);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO info;
        if (dev->func->C_GetTokenInfo(slots[i], &info) != CKR_OK) {
            continue;
        }
        /* A label is 32 bytes, padded with spaces. */
        bool match = len <= sizeof(info.label) && memcmp(info.label, label, len) == 0;
        for (size_t k = len; match && k < sizeof(info.label); k++) {
            match = info.label[k] == ' ';
        }
        if (match || !len) {
            *ret = slots[i];
            return 0;
        }
    }
    return -ENOENT;
}

static bool same(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

/* The token already open (a reload): the same one again, or an error, as a module cannot
 * be loaded twice. */
static int reuse_token(TlsContext *c, const Config *cfg, char *err, size_t errlen)
{
    const __typeof__(cfg->tls) *t = &cfg->tls;
    Token *k = the_token;
    if (!same(k->key_file, t->key_file) || !same(k->module, t->pkcs11_module) ||
        !same(k->pin_file, t->pin_file)) {
        snprintf(err, errlen,
                 "TLS: the PKCS#11 key, module or PIN file changed: restart the daemon to use "
                 "them (a module is loaded once per process)");
        return -EINVAL;
    }
    k->refs++;
    c->token = k;
    return 0;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Load the module, log in to the token, and let wolfCrypt sign with it (dev_id). */
static int open_token(TlsContext *c, const Config *cfg, char *err, size_t errlen)
{
    static int next_dev_id = 0x4d51; /* ours: any value other than INVALID_DEVID */
    const __typeof__(cfg->tls) *t = &cfg->tls;
    if (the_token) {
        return reuse_token(c, cfg, err, errlen);
    }
    Token *k = calloc(1, sizeof(*k));
    if (!k) {
        snprintf(err, errlen, "TLS: out of memory");
        return -ENOMEM;
    }
    k->refs = 1;
    the_token = c->token = k;
    k->key_file = dup_or_null(t->key_file);
    k->module = dup_or_null(t->pkcs11_module);
    k->pin_file = dup_or_null(t->pin_file);
    char *pin = k->pin;
    int r = !k->key_file || (t->pkcs11_module && !k->module) || (t->pin_file && !k->pin_file)
                ? -ENOMEM
                : 0;
    if (r < 0) {
        snprintf(err, errlen, "TLS: out of memory");
    }
    if (r == 0 && (r = pkcs11_uri_parse(t->key_file, &k->uri, err, errlen)) == 0 &&
        (r = read_pin(t->pin_file, pin, sizeof(k->pin), err, errlen)) == 0 &&
        wc_Pkcs11_Initialize(&k->dev, t->pkcs11_module, NULL) != 0) {
        snprintf(err, errlen, "TLS: cannot load the PKCS#11 module %s", t->pkcs11_module);
        r = -EINVAL;
    }
    k->dev_loaded = r == 0;
    CK_SLOT_ID slot = 0;
    if (r == 0 && (r = find_slot(&k->dev, k->uri.token, &slot)) < 0) {
        snprintf(err, errlen, "TLS: no PKCS#11 token '%s' in %s", k->uri.token, t->pkcs11_module);
    }
    if (r == 0) {
        /* The slot is set after: wolfSSL takes it as an int, and slot ids are 32 bits. */
        if (wc_Pkcs11Token_Init(&k->token, &k->dev, (int)slot, k->uri.token, (unsigned char *)pin,
                                (int)strlen(pin)) != 0) {
            snprintf(err, errlen, "TLS: cannot use PKCS#11 token '%s'", k->uri.token);
            r = -EINVAL;
        }
        k->token.slotId = slot;
    }
    if (r == 0 && wc_Pkcs11Token_Open(&k->token, 1) != 0) { /* read-write: SoftHSM logs in so */
        snprintf(err, errlen, "TLS: cannot log in to PKCS#11 token '%s' with %s (a wrong PIN?)",
                 k->uri.token, set(t->pin_file) ? t->pin_file : "no PIN");
        r = -EINVAL;
    }
    k->token_open = r == 0;
    if (r == 0 && wc_CryptoCb_RegisterDevice(next_dev_id, wc_Pkcs11_CryptoDevCb, &k->token) != 0) {
        snprintf(err, errlen, "TLS: cannot register the PKCS#11 token with wolfCrypt");
        r = -EINVAL;
    }
    if (r == 0) {
        /* Only the key is the token's (load_client_cert): were the context's devId set, the
         * handshake's other work would go to the token too, and its ephemeral ECDH keys there
         * fail from the second handshake on (wolfSSL 5.5, SoftHSM2). */
        k->dev_id = next_dev_id++;
    }
    return r;
}

int tls_context_new(const Config *cfg, TlsContext **ret, char *err, size_t errlen)
{
    if (!cfg->tls.enabled) {
        *ret = NULL;
        return 0;
    }
    TlsContext *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "TLS: out of memory");
        return -ENOMEM;
    }
    c->ctx = make_ctx(cfg, err, errlen);
    if (!c->ctx) {
        free(c);
        return -EINVAL;
    }
    int r;
    c->refs = 1;
    if (pkcs11_uri_is(cfg->tls.key_file) && (r = open_token(c, cfg, err, errlen)) < 0) {
        tls_context_unref(c);
        return r;
    }
    /* The client certificate is read per connection; try it once here to catch mistakes. */
    WOLFSSL *probe = wolfSSL_new(c->ctx);
    r = probe ? load_client_cert(probe, c, cfg, err, errlen) : -ENOMEM;
    if (probe) {
        wolfSSL_free(probe);
    } else {
        snprintf(err, errlen, "TLS: out of memory");
    }
    if (r < 0) {
        tls_context_unref(c);
        return r;
    }
    *ret = c;
    return 0;
}

static void forget_session(TlsContext *ctx)
{
    if (ctx->resume) {
        wolfSSL_SESSION_free(ctx->resume);
        ctx->resume = NULL;
    }
}

void tls_context_unref(TlsContext *c)
{
    if (c && --c->refs == 0) {
        forget_session(c);
        wolfSSL_CTX_free(c->ctx);
        close_token(c->token);
        free(c);
    }
}

/* wolfSSL's receive callback (its error codes, as its own socket callback answers). */
static int recv_ahead(WOLFSSL *ssl, char *buf, int sz, void *ctx)
{
    (void)ssl;
    TlsConn *t = ctx;
    if (sz <= 0) {
        return WOLFSSL_CBIO_ERR_GENERAL; /* wolfSSL never asks for nothing */
    }
    if (t->ahead_off == t->ahead_len) {
        ssize_t n = recv(t->fd, t->ahead, READ_AHEAD, 0);
        if (n < 0) {
            return errno == EAGAIN || errno == EWOULDBLOCK   ? WOLFSSL_CBIO_ERR_WANT_READ
                   : errno == EINTR                          ? WOLFSSL_CBIO_ERR_ISR
                   : errno == ECONNRESET                     ? WOLFSSL_CBIO_ERR_CONN_RST
                   : errno == EPIPE || errno == ECONNABORTED ? WOLFSSL_CBIO_ERR_CONN_CLOSE
                                                             : WOLFSSL_CBIO_ERR_GENERAL;
        }
        if (n == 0) {
            return WOLFSSL_CBIO_ERR_CONN_CLOSE;
        }
        t->ahead_off = 0;
        t->ahead_len = (size_t)n;
    }
    size_t k = t->ahead_len - t->ahead_off;
    k = (size_t)sz < k ? (size_t)sz : k;
    memcpy(buf, t->ahead + t->ahead_off, k);
    t->ahead_off += k;
    return (int)k;
}

/* FNV-1a of a file's first 64 KiB and its size (0 when it cannot be read: it is then not
 * the file a session was made with, or the handshake fails anyway). */
static uint64_t file_id(const char *path)
{
    uint64_t h = 14695981039346656037ull;
    FILE *f = fopen(path, "rb");
    if (!f) {
        return 0;
    }
    uint8_t buf[4096];
    size_t n, total = 0;
    while (total < 65536 && (n = fread(buf, 1, sizeof(buf), f)) > 0) {
        for (size_t i = 0; i < n; i++) {
            h = (h ^ buf[i]) * 1099511628211ull;
        }
        total += n;
    }
    if (fseek(f, 0, SEEK_END) == 0) {
        h = (h ^ (uint64_t)ftell(f)) * 1099511628211ull;
    }
    (void)fclose(f); /* read only */
    return h;
}

/* What the client presents: a session is resumed only with the same certificate (the key
 * must match it), so a rotated certificate is shown at the next connect (a resumed handshake
 * shows none). Read before the certificate is loaded: a rotation in between then counts. */
static uint64_t creds_id(const Config *cfg)
{
    return set(cfg->tls.cert_file) ? file_id(cfg->tls.cert_file) : 0;
}

static double mono_s(void)
{
    struct timespec ts;
    (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for CLOCK_MONOTONIC */
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* wolfSSL: the broker sent a session ticket (after the handshake, with TLS 1.3). */
static int on_ticket(WOLFSSL *ssl, const unsigned char *ticket, int len, void *ctx)
{
    (void)ssl, (void)ticket, (void)ctx;
    TlsConn *t = wolfSSL_GetIOReadCtx(ssl);
    t->ticket = len > 0;
    return 0;
}

/* Offer the last session to a new connection to the same name (the broker may decline it:
 * the handshake is then a full one), and note the tickets this one is sent. */
static void resume_from(TlsConn *t, const char *name)
{
    snprintf(t->name, sizeof(t->name), "%s", name);
    (void)wolfSSL_set_SessionTicket_cb(t->ssl, on_ticket, NULL); /* only fails for a NULL ssl */
    TlsContext *ctx = t->ctx;
    if (!ctx->resume || strcmp(ctx->resume_name, t->name) != 0 || ctx->resume_creds != t->creds) {
        return;
    }
    if (mono_s() - ctx->resume_verified_at > RESUME_MAX_S) {
        log_debug("TLS: a full handshake with %s, to see its certificate again", t->name);
        forget_session(ctx);
    } else if (wolfSSL_set_session(t->ssl, ctx->resume) != WOLFSSL_SUCCESS) {
        log_debug("TLS: the last session with %s has expired; a full handshake follows", t->name);
        forget_session(ctx);
    } else {
        t->offered = true;
    }
}

/* A connection that got through its handshake without a fatal error, and was sent a ticket
 * of its own, leaves its session for the next one (a session whose ticket came from an
 * earlier connection would not match this one's secret). One that offered the kept session
 * and failed its handshake drops it. */
static void keep_session(TlsConn *t)
{
    TlsContext *ctx = t->ctx;
    if (!t->established) {
        if (t->offered) {
            forget_session(ctx);
        }
        return;
    }
    WOLFSSL_SESSION *s = t->ticket ? wolfSSL_get1_session(t->ssl) : NULL;
    if (!s) {
        return;
    }
    bool resumed = tls_resumed(t);
    forget_session(ctx);
    ctx->resume = s;
    ctx->resume_creds = t->creds;
    ctx->resume_verified_at = resumed ? ctx->resume_verified_at : t->started;
    snprintf(ctx->resume_name, sizeof(ctx->resume_name), "%s", t->name);
}

int tls_new(TlsContext *ctx, const Config *cfg, int fd, const char *host, TlsConn **ret, char *err,
            size_t errlen)
{
    assert(ctx && ctx->refs > 0);
    TlsConn *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "TLS: out of memory");
        return -ENOMEM;
    }
    t->ctx = ctx;
    ctx->refs++;
    t->ssl = wolfSSL_new(ctx->ctx);
    if (!t->ssl) {
        snprintf(err, errlen, "TLS: out of memory");
        tls_free(t);
        return -ENOMEM;
    }
    t->creds = creds_id(cfg);
    t->started = mono_s();
    int r = load_client_cert(t->ssl, ctx, cfg, err, errlen);
    if (r < 0) {
        tls_free(t);
        return r;
    }
    t->has_cert = set(cfg->tls.cert_file);
    const char *name = set(cfg->tls.server_name) ? cfg->tls.server_name : host;
    resume_from(t, name);
    if (!(t->ahead = malloc(READ_AHEAD))) {
        snprintf(err, errlen, "TLS: out of memory");
        tls_free(t);
        return -ENOMEM;
    }
    t->fd = fd;
    wolfSSL_set_fd(t->ssl, fd); /* writes go straight to the socket */
    wolfSSL_SSLSetIORecv(t->ssl, recv_ahead);
    wolfSSL_SetIOReadCtx(t->ssl, t); /* after set_fd, which sets its own */
    wolfSSL_set_using_nonblock(t->ssl, 1);
    wolfSSL_UseSNI(t->ssl, WOLFSSL_SNI_HOST_NAME, name, (unsigned short)strlen(name));
    if (cfg->tls.verify) {
        wolfSSL_check_domain_name(t->ssl, name);
    } else {
        log_warning("TLS certificate verification is OFF ([tls] verify = false): the broker at "
                    "%s is not authenticated and the connection can be intercepted",
                    name);
    }
    if (set(cfg->tls.alpn)) {
        char alpn[256];
        snprintf(alpn, sizeof(alpn), "%s", cfg->tls.alpn);
        wolfSSL_UseALPN(t->ssl, alpn, (unsigned)strlen(alpn), WOLFSSL_ALPN_FAILED_ON_MISMATCH);
    }
    *ret = t;
    return 0;
}

void tls_free(TlsConn *t)
{
    if (!t) {
        return;
    }
    if (t->ssl) {
        keep_session(t);
        wolfSSL_free(t->ssl);
    }
    tls_context_unref(t->ctx);
    free(t->ahead);
    free(t);
}

/* The one place wolfSSL errors become words. */
static void describe(TlsConn *t, int e, char *err, size_t errlen)
{
    WOLFSSL_ALERT_HISTORY h = {0};
    wolfSSL_get_alert_history(t->ssl, &h);
    int alert = h.last_rx.code;
    switch (e) {
    case ASN_NO_SIGNER_E:
    case ASN_SELF_SIGNED_E:
        snprintf(err, errlen,
                 "the broker's certificate is signed by an unknown CA (check "
                 "[tls] ca_file)");
        return;
    case DOMAIN_NAME_MISMATCH:
    case IPADDR_MISMATCH:
        snprintf(err, errlen,
                 "the broker's certificate does not match the host name (check "
                 "[tls] server_name)");
        return;
    case ASN_AFTER_DATE_E:
        snprintf(err, errlen, "the broker's certificate has expired");
        return;
    case ASN_BEFORE_DATE_E:
        snprintf(err, errlen, "the broker's certificate is not valid yet (check the clock)");
        return;
    case SOCKET_PEER_CLOSED_E:
    case SOCKET_ERROR_E:
        snprintf(err, errlen,
                 "the broker closed the connection during the TLS handshake (is "
                 "this a TLS port?)");
        return;
    case VERSION_ERROR:
        snprintf(err, errlen, "the broker does not speak TLS here (is this a plain MQTT port?)");
        return;
    default:
        break;
    }
    /* Alerts the broker sent: 116 certificate_required (TLS 1.3), 40 handshake_failure and 42
     * bad_certificate are what a broker wanting a client certificate sends. */
    if (!t->has_cert && (alert == 116 || alert == 40 || alert == 42)) {
        snprintf(err, errlen,
                 "the broker requires a client certificate (set [tls] cert_file "
                 "and key_file)");
        return;
    }
    if (alert == 70) {
        snprintf(err, errlen,
                 "the broker does not accept our TLS version (check [tls] "
                 "min_version)");
        return;
    }
    char text[WOLFSSL_MAX_ERROR_SZ];
    wolfSSL_ERR_error_string_n((unsigned long)e, text, sizeof(text));
    if (alert) {
        snprintf(err, errlen, "TLS error %d (%s), broker alert %d", e, text, alert);
    } else {
        snprintf(err, errlen, "TLS error %d (%s)", e, text);
    }
}

static int want_of(int e, int *want)
{
    if (e == WOLFSSL_ERROR_WANT_READ) {
        *want = EV_READ;
        return -EAGAIN;
    }
    if (e == WOLFSSL_ERROR_WANT_WRITE) {
        *want = EV_WRITE;
        return -EAGAIN;
    }
    return 0;
}

int tls_handshake(TlsConn *t, int *want, char *err, size_t errlen)
{
    int r = wolfSSL_connect(t->ssl);
    if (r == WOLFSSL_SUCCESS) {
        t->established = true;
        return 0;
    }
    int e = wolfSSL_get_error(t->ssl, r);
    if (want_of(e, want)) {
        return -EAGAIN;
    }
    describe(t, e, err, errlen);
    return -EPROTO;
}

long tls_read(TlsConn *t, void *buf, size_t n, int *want)
{
    int r = wolfSSL_read(t->ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0) {
        return r;
    }
    int e = wolfSSL_get_error(t->ssl, r);
    if (want_of(e, want)) {
        return -EAGAIN;
    }
    if (e == WOLFSSL_ERROR_ZERO_RETURN || e == SOCKET_PEER_CLOSED_E) {
        return 0;
    }
    /* With TLS 1.3 the broker may refuse us (e.g. no client certificate) only after our
     * side of the handshake is done: that alert arrives here. */
    t->established = false; /* a session that ended in an error is not resumed */
    describe(t, e, t->error, sizeof(t->error));
    return -EPROTO;
}

const char *tls_last_error(TlsConn *t)
{
    return t->error;
}

long tls_write(TlsConn *t, const void *buf, size_t n, int *want)
{
    int r = wolfSSL_write(t->ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0) {
        return r;
    }
    int e = wolfSSL_get_error(t->ssl, r);
    if (want_of(e, want)) {
        return -EAGAIN;
    }
    if (e == SOCKET_ERROR_E || e == SOCKET_PEER_CLOSED_E) {
        return -EPIPE;
    }
    t->established = false; /* a session that ended in an error is not resumed */
    describe(t, e, t->error, sizeof(t->error));
    return -EPROTO;
}

bool tls_pending(TlsConn *t)
{
    return wolfSSL_pending(t->ssl) > 0 || t->ahead_off < t->ahead_len;
}

bool tls_resumed(TlsConn *t)
{
    return wolfSSL_session_reused(t->ssl) == 1;
}

const char *tls_version(TlsConn *t)
{
    return wolfSSL_get_version(t->ssl);
}

const char *tls_cipher(TlsConn *t)
{
    return wolfSSL_get_cipher_name(t->ssl);
}

/* The module's one export (tls_module.h): the table the daemon loads. */
__attribute__((visibility("default"))) const TlsModule mqttbridge_tls_module = {
    .version = MQTTBRIDGE_VERSION,
    .size = sizeof(TlsModule),
    .config_size = sizeof(Config),
    .context_new = tls_context_new,
    .context_unref = tls_context_unref,
    .conn_new = tls_new,
    .conn_free = tls_free,
    .handshake = tls_handshake,
    .read = tls_read,
    .write = tls_write,
    .last_error = tls_last_error,
    .pending = tls_pending,
    .resumed = tls_resumed,
    .version_of = tls_version,
    .cipher = tls_cipher,
};

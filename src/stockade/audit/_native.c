/* Native fast paths of the audit record format (record.py): the optional twin of two hot loops.
 *
 * build(fields, order, seq, ts, prev, max_depth, max_len) -> (frame, digest) | None
 *   The common record (ASCII keys at every level; str/bytes/int within 64 bits/bool/None/list/
 *   tuple/dict values) encoded in RFC 8949 deterministic CBOR with its chain fields, hashed
 *   (SHA-256(prev || CBOR(record without "hash"))) and framed (4-byte big-endian length).
 *   `order` is the record's top-level keys in canonical order, the chain keys included.
 *   None whenever the record is anything else: the Python encoder then decides, so this can only
 *   ever produce what record._build_fast produces (tests/audit/test_native.py checks it).
 *
 * scan(data, offset, end, exp_seq, last_hash, stop_seq) -> (offset, count, last_hash)
 *   Walks frames from `offset` while each one is a provably canonical record (shortest heads,
 *   definite lengths, ASCII text keys strictly in canonical order at every level, well-formed
 *   UTF-8 text values, no floats or tags), carries seq == exp_seq (< stop_seq: checkpointed seqs
 *   are Python's) and prev == the previous hash, and its own hash matches: the common case of
 *   verify.ChainVerifier.feed. It stops at the first
 *   frame it cannot prove, which the Python verifier then checks and names exactly. No Python
 *   objects are built per record, and the GIL is released while it runs.
 *
 * Built by make: cc -O2 -shared -fPIC -I<the venv Python's include dir> _native.c -lcrypto
 *   -o _native<EXT_SUFFIX> (needs a C compiler and libssl-dev). Absent, record.py runs the Python paths.
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED
#include <Python.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

/* -- a growable output buffer ------------------------------------------------------------------ */
typedef struct {
    unsigned char *p;
    Py_ssize_t len, cap;
    unsigned char local[2048];
} Buf;

static void buf_init(Buf *b) { b->p = b->local; b->len = 0; b->cap = sizeof b->local; }
static void buf_free(Buf *b) { if (b->p != b->local) PyMem_Free(b->p); }

static int buf_grow_slow(Buf *b, Py_ssize_t need);

static inline int buf_grow(Buf *b, Py_ssize_t need) {
    return b->len + need <= b->cap ? 0 : buf_grow_slow(b, need);
}

static int buf_grow_slow(Buf *b, Py_ssize_t need) {
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + need) cap *= 2;
    unsigned char *n = PyMem_Malloc((size_t)cap);
    if (n == NULL) return -1;
    memcpy(n, b->p, (size_t)b->len);
    if (b->p != b->local) PyMem_Free(b->p);
    b->p = n;
    b->cap = cap;
    return 0;
}

static inline int put_head(Buf *b, unsigned major, uint64_t v) {
    if (buf_grow(b, 9) < 0) return -1;
    unsigned char *o = b->p + b->len;
    major <<= 5;
    if (v < 24) { o[0] = (unsigned char)(major | v); b->len += 1; }
    else if (v < 0x100) { o[0] = (unsigned char)(major | 24); o[1] = (unsigned char)v; b->len += 2; }
    else if (v < 0x10000) {
        o[0] = (unsigned char)(major | 25); o[1] = (unsigned char)(v >> 8); o[2] = (unsigned char)v; b->len += 3;
    } else if (v < 0x100000000ULL) {
        o[0] = (unsigned char)(major | 26);
        for (int i = 0; i < 4; i++) o[1 + i] = (unsigned char)(v >> (24 - 8 * i));
        b->len += 5;
    } else {
        o[0] = (unsigned char)(major | 27);
        for (int i = 0; i < 8; i++) o[1 + i] = (unsigned char)(v >> (56 - 8 * i));
        b->len += 9;
    }
    return 0;
}

static inline int put_raw(Buf *b, unsigned major, const char *s, Py_ssize_t n) {
    if (put_head(b, major, (uint64_t)n) < 0 || buf_grow(b, n) < 0) return -1;
    memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

/* -- encoding ---------------------------------------------------------------------------------- */
/* Results of the encoder's helpers: OK, FALLBACK (not ours: let Python decide), ERROR (exception set). */
#define OK 0
#define FALLBACK 1
#define ERROR (-1)

static int enc(Buf *b, PyObject *v, int level, int max_depth);

static int enc_int(Buf *b, PyObject *v) {
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) return ERROR;
    if (!overflow) {
        if (x >= 0) return put_head(b, 0, (uint64_t)x) < 0 ? ERROR : OK;
        return put_head(b, 1, (uint64_t)(-(x + 1))) < 0 ? ERROR : OK;
    }
    PyObject *m = overflow > 0 ? (Py_INCREF(v), v) : PyNumber_Invert(v);   /* -1 - x for negatives */
    if (m == NULL) return ERROR;
    unsigned long long u = PyLong_AsUnsignedLongLong(m);
    Py_DECREF(m);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return FALLBACK;            /* beyond 64 bits: a bignum tag, never the fast path */
    }
    return put_head(b, overflow > 0 ? 0 : 1, u) < 0 ? ERROR : OK;
}

static int enc_str(Buf *b, PyObject *v) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (s == NULL) { PyErr_Clear(); return FALLBACK; }    /* a lone surrogate: normalize() decides */
    return put_raw(b, 3, s, n) < 0 ? ERROR : OK;
}

typedef struct { const char *s; Py_ssize_t n; PyObject *v; } Entry;

static int entry_less(const Entry *a, const Entry *b) {
    if (a->n != b->n) return a->n < b->n;
    return memcmp(a->s, b->s, (size_t)a->n) < 0;
}

static int enc_dict(Buf *b, PyObject *d, int level, int max_depth) {
    Py_ssize_t n = PyDict_GET_SIZE(d), pos = 0, i = 0;
    Entry local[32], *e = n <= 32 ? local : PyMem_Malloc(sizeof(Entry) * (size_t)n);
    if (e == NULL) { PyErr_NoMemory(); return ERROR; }
    PyObject *k, *v;
    int rc = OK;
    while (PyDict_Next(d, &pos, &k, &v)) {
        if (!PyUnicode_CheckExact(k) || !PyUnicode_IS_ASCII(k)) { rc = FALLBACK; goto done; }
        e[i].s = (const char *)PyUnicode_DATA(k);
        e[i].n = PyUnicode_GET_LENGTH(k);
        e[i].v = v;
        /* insertion sort: maps in records are small */
        Py_ssize_t j = i++;
        Entry cur = e[j];
        while (j > 0 && entry_less(&cur, &e[j - 1])) { e[j] = e[j - 1]; j--; }
        e[j] = cur;
    }
    if (put_head(b, 5, (uint64_t)n) < 0) { rc = ERROR; goto done; }
    for (i = 0; i < n; i++) {
        if (put_raw(b, 3, e[i].s, e[i].n) < 0) { rc = ERROR; goto done; }
        rc = enc(b, e[i].v, level + 1, max_depth);
        if (rc != OK) goto done;
    }
done:
    if (e != local) PyMem_Free(e);
    return rc;
}

/* `level`: the level `v` sits at when it is a container (a top-level field's value is level 2). */
static int enc(Buf *b, PyObject *v, int level, int max_depth) {
    if (v == Py_None) return put_head(b, 7, 22) < 0 ? ERROR : OK;
    if (v == Py_True) return put_head(b, 7, 21) < 0 ? ERROR : OK;
    if (v == Py_False) return put_head(b, 7, 20) < 0 ? ERROR : OK;
    if (PyUnicode_CheckExact(v)) return enc_str(b, v);
    if (PyLong_CheckExact(v)) return enc_int(b, v);
    if (PyBytes_CheckExact(v)) return put_raw(b, 2, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v)) < 0 ? ERROR : OK;
    int is_list = PyList_CheckExact(v), is_tuple = PyTuple_CheckExact(v), is_dict = PyDict_CheckExact(v);
    if (!(is_list || is_tuple || is_dict)) return FALLBACK;
    if (level > max_depth) return FALLBACK;
    if (is_dict) return enc_dict(b, v, level, max_depth);
    /* A list may change size while its items are encoded (no: the GIL is held and nothing here
     * runs Python code), so plain indexing is safe. */
    Py_ssize_t n = is_list ? PyList_GET_SIZE(v) : PyTuple_GET_SIZE(v);
    if (put_head(b, 4, (uint64_t)n) < 0) return ERROR;
    for (Py_ssize_t i = 0; i < n; i++) {
        int rc = enc(b, is_list ? PyList_GET_ITEM(v, i) : PyTuple_GET_ITEM(v, i), level + 1, max_depth);
        if (rc != OK) return rc;
    }
    return OK;
}

/* Which chain key `k` (ASCII text) is: 's'eq, 't's, 'p'rev, 'h'ash, or 0 for a field of the record. */
static char chain_key(PyObject *k) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(k);
    const char *s = (const char *)PyUnicode_DATA(k);
    if (n == 2 && s[0] == 't' && s[1] == 's') return 't';
    if (n == 3 && memcmp(s, "seq", 3) == 0) return 's';
    if (n == 4 && memcmp(s, "prev", 4) == 0) return 'p';
    if (n == 4 && memcmp(s, "hash", 4) == 0) return 'h';
    return 0;
}

static int head_len(uint64_t n) { return n < 24 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : n < 0x100000000ULL ? 5 : 9; }

static PyObject *py_build(PyObject *self, PyObject *args) {
    PyObject *fields, *order, *seq, *ts, *prev_obj;
    int max_depth;
    Py_ssize_t max_len;
    if (!PyArg_ParseTuple(args, "O!O!OOOin", &PyDict_Type, &fields, &PyTuple_Type, &order, &seq, &ts, &prev_obj,
                          &max_depth, &max_len))
        return NULL;
    /* exactly int, int, bytes (as record._build_fast requires): anything else is Python's */
    if (!PyLong_CheckExact(seq) || !PyLong_CheckExact(ts) || !PyBytes_CheckExact(prev_obj)) Py_RETURN_NONE;
    struct { const char *buf; Py_ssize_t len; } prev = {PyBytes_AS_STRING(prev_obj), PyBytes_GET_SIZE(prev_obj)};
    PyObject *result = NULL;
    Buf pre, post;
    buf_init(&pre);
    buf_init(&post);
    Buf *cur = &pre;
    int rc = OK, seen_hash = 0;
    Py_ssize_t n = PyTuple_GET_SIZE(order);
    if (prev.len != 32) { rc = FALLBACK; goto out; }
    for (Py_ssize_t i = 0; i < n && rc == OK; i++) {
        PyObject *k = PyTuple_GET_ITEM(order, i);
        if (!PyUnicode_CheckExact(k) || !PyUnicode_IS_ASCII(k)) { rc = FALLBACK; break; }
        char ck = chain_key(k);
        if (ck == 'h') { seen_hash = 1; cur = &post; continue; }
        if (put_raw(cur, 3, (const char *)PyUnicode_DATA(k), PyUnicode_GET_LENGTH(k)) < 0) { rc = ERROR; break; }
        if (ck == 's') rc = enc_int(cur, seq);
        else if (ck == 't') rc = enc_int(cur, ts);
        else if (ck == 'p') rc = put_raw(cur, 2, prev.buf, 32) < 0 ? ERROR : OK;
        else {
            PyObject *v = PyDict_GetItemWithError(fields, k);
            if (v == NULL) { rc = PyErr_Occurred() ? ERROR : FALLBACK; break; }
            rc = enc(cur, v, 2, max_depth);
        }
    }
    if (rc == OK && !seen_hash) rc = FALLBACK;
    if (rc != OK) goto out;
    uint64_t entries = (uint64_t)n - 1;     /* without the hash entry */
    unsigned char head_wo[9], head_w[9];
    Buf hb;
    hb.p = head_wo; hb.len = 0; hb.cap = 9;
    put_head(&hb, 5, entries);
    int hl_wo = (int)hb.len;
    hb.p = head_w; hb.len = 0; hb.cap = 9;
    put_head(&hb, 5, entries + 1);
    int hl_w = (int)hb.len;
    Py_ssize_t body = hl_w + pre.len + 39 + post.len;
    if (body > max_len) { rc = FALLBACK; goto out; }
    unsigned char digest[32];
    SHA256_CTX c;
    SHA256_Init(&c);
    SHA256_Update(&c, prev.buf, 32);
    SHA256_Update(&c, head_wo, (size_t)hl_wo);
    SHA256_Update(&c, pre.p, (size_t)pre.len);
    SHA256_Update(&c, post.p, (size_t)post.len);
    SHA256_Final(digest, &c);
    PyObject *fr = PyBytes_FromStringAndSize(NULL, 4 + body);
    if (fr == NULL) { rc = ERROR; goto out; }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(fr);
    o[0] = (unsigned char)(body >> 24); o[1] = (unsigned char)(body >> 16);
    o[2] = (unsigned char)(body >> 8); o[3] = (unsigned char)body;
    o += 4;
    memcpy(o, head_w, (size_t)hl_w); o += hl_w;
    memcpy(o, pre.p, (size_t)pre.len); o += pre.len;
    memcpy(o, "\x64hash\x58\x20", 7); o += 7;
    memcpy(o, digest, 32); o += 32;
    memcpy(o, post.p, (size_t)post.len);
    result = Py_BuildValue("(Ny#)", fr, (const char *)digest, (Py_ssize_t)32);
out:
    buf_free(&pre);
    buf_free(&post);
    if (rc == ERROR) return NULL;
    if (rc == FALLBACK) Py_RETURN_NONE;
    return result;
}

/* -- checking ---------------------------------------------------------------------------------- */
#define MAX_FRAME (16u << 20)
#define SCAN_DEPTH 100          /* deeper than any record the writer makes; deeper: Python decides */

/* The head at *p: major type, argument; 0 unless shortest-form and definite (what canonical means). */
static int head(const unsigned char **p, const unsigned char *end, unsigned *major, uint64_t *val) {
    if (*p >= end) return 0;
    unsigned ib = **p, ai = ib & 31;
    *major = ib >> 5;
    (*p)++;
    if (ai < 24) { *val = ai; return 1; }
    int n = ai == 24 ? 1 : ai == 25 ? 2 : ai == 26 ? 4 : ai == 27 ? 8 : 0;
    if (n == 0 || end - *p < n) return 0;
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | (*p)[i];
    *p += n;
    *val = v;
    uint64_t min = n == 1 ? 24 : n == 2 ? 0x100 : n == 4 ? 0x10000 : 0x100000000ULL;
    return v >= min;
}

static int ascii(const unsigned char *s, uint64_t n) {
    for (uint64_t i = 0; i < n; i++)
        if (s[i] & 0x80) return 0;
    return 1;
}

/* Well-formed UTF-8 (Unicode table 3-7: no overlongs, no surrogates, nothing past U+10FFFF): text
 * any decoder gives back as exactly these bytes, so its canonical length is its length. */
static int utf8(const unsigned char *s, uint64_t n) {
    uint64_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        unsigned lo = 0x80, hi = 0xBF;
        int k;
        if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c >= 0xE0 && c <= 0xEF) { k = 2; if (c == 0xE0) lo = 0xA0; else if (c == 0xED) hi = 0x9F; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 3; if (c == 0xF0) lo = 0x90; else if (c == 0xF4) hi = 0x8F; }
        else return 0;
        if (n - i <= (uint64_t)k) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (int j = 2; j <= k; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xBF) return 0;
        i += (uint64_t)k + 1;
    }
    return 1;
}

/* One canonical item from *p (1: ok, advanced; 0: not provably canonical). */
static int item(const unsigned char **p, const unsigned char *end, int depth) {
    unsigned major;
    uint64_t v;
    if (!head(p, end, &major, &v)) return 0;
    switch (major) {
    case 0: case 1: return 1;
    case 2: case 3:
        if ((uint64_t)(end - *p) < v) return 0;
        if (major == 3 && !utf8(*p, v)) return 0;
        *p += v;
        return 1;
    case 4:
        if (depth >= SCAN_DEPTH || v > (uint64_t)(end - *p)) return 0;
        for (uint64_t i = 0; i < v; i++)
            if (!item(p, end, depth + 1)) return 0;
        return 1;
    case 5: {
        if (depth >= SCAN_DEPTH || v > (uint64_t)(end - *p)) return 0;
        const unsigned char *lk = NULL;
        uint64_t ll = 0;
        for (uint64_t i = 0; i < v; i++) {
            unsigned km;
            uint64_t kl;
            if (!head(p, end, &km, &kl) || km != 3 || (uint64_t)(end - *p) < kl || !ascii(*p, kl)) return 0;
            if (lk != NULL && (kl < ll || (kl == ll && memcmp(*p, lk, kl) <= 0))) return 0;
            lk = *p;
            ll = kl;
            *p += kl;
            if (!item(p, end, depth + 1)) return 0;
        }
        return 1;
    }
    case 7: return v == 20 || v == 21 || v == 22;    /* false, true, null: no floats, no other simple values */
    default: return 0;                               /* tags */
    }
}

typedef struct { uint64_t seq; const unsigned char *prev, *hash; } Chain;

/* A whole record: a canonical map with seq >= 1, int ts, 32-byte prev and hash, hash entry unique
 * in the body, and SHA-256(prev || record without its hash entry) == hash. 1 if all hold. */
static int record(const unsigned char *body, uint64_t len, Chain *out, unsigned char *scratch) {
    const unsigned char *p = body, *end = body + len, *hash_entry = NULL;
    unsigned major;
    uint64_t n;
    int got_seq = 0, got_ts = 0;
    out->prev = out->hash = NULL;
    if (!head(&p, end, &major, &n) || major != 5 || n == 0 || n > len) return 0;
    const unsigned char *lk = NULL;
    uint64_t ll = 0;
    for (uint64_t i = 0; i < n; i++) {
        const unsigned char *entry = p;
        unsigned km;
        uint64_t kl;
        if (!head(&p, end, &km, &kl) || km != 3 || (uint64_t)(end - p) < kl || !ascii(p, kl)) return 0;
        if (lk != NULL && (kl < ll || (kl == ll && memcmp(p, lk, kl) <= 0))) return 0;
        const unsigned char *k = p;
        lk = p;
        ll = kl;
        p += kl;
        const unsigned char *val = p;
        if (!item(&p, end, 1)) return 0;
        if (kl == 3 && memcmp(k, "seq", 3) == 0) {
            unsigned m;
            uint64_t s;
            if (!head(&val, end, &m, &s) || m != 0 || s == 0) return 0;
            out->seq = s;
            got_seq = 1;
        } else if (kl == 2 && memcmp(k, "ts", 2) == 0) {
            if ((*val >> 5) > 1) return 0;
            got_ts = 1;
        } else if (kl == 4 && (memcmp(k, "prev", 4) == 0 || memcmp(k, "hash", 4) == 0)) {
            if (p - val != 34 || val[0] != 0x58 || val[1] != 0x20) return 0;
            if (k[0] == 'p') out->prev = val + 2;
            else { out->hash = val + 2; hash_entry = entry; }
        }
    }
    if (p != end || !got_seq || !got_ts || out->prev == NULL || out->hash == NULL) return 0;
    /* verify.check_fast hashes around the first occurrence of the hash entry and needs it unique */
    const unsigned char *f = memmem(body, len, hash_entry, 39);
    if (f != hash_entry || memmem(f + 1, (size_t)(end - f - 1), hash_entry, 39) != NULL) return 0;
    /* SHA-256(prev || head(n-1) || entries before the hash entry || entries after it) */
    SHA256_CTX c;
    unsigned char h1[9], digest[32];
    Buf hb;
    hb.p = h1; hb.len = 0; hb.cap = 9;
    put_head(&hb, 5, n - 1);
    int hl = head_len(n);
    (void)scratch;
    SHA256_Init(&c);
    SHA256_Update(&c, out->prev, 32);
    SHA256_Update(&c, h1, (size_t)hb.len);
    SHA256_Update(&c, body + hl, (size_t)(hash_entry - body - hl));
    SHA256_Update(&c, hash_entry + 39, (size_t)(end - hash_entry - 39));
    SHA256_Final(digest, &c);
    return memcmp(digest, out->hash, 32) == 0;
}

static PyObject *py_scan(PyObject *self, PyObject *args) {
    Py_buffer data, last;
    Py_ssize_t off, end;
    unsigned long long exp_seq, stop_seq;
    if (!PyArg_ParseTuple(args, "y*nnKy*K", &data, &off, &end, &exp_seq, &last, &stop_seq)) return NULL;
    if (last.len != 32 || off < 0 || end > data.len || off > end) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&last);
        PyErr_SetString(PyExc_ValueError, "scan: bad arguments");
        return NULL;
    }
    const unsigned char *buf = data.buf;
    unsigned char h[32];
    memcpy(h, last.buf, 32);
    Py_ssize_t count = 0;
    Py_BEGIN_ALLOW_THREADS
    while (end - off >= 4) {
        const unsigned char *f = buf + off;
        uint64_t ln = ((uint64_t)f[0] << 24) | ((uint64_t)f[1] << 16) | ((uint64_t)f[2] << 8) | f[3];
        if (ln == 0 || ln > MAX_FRAME || (uint64_t)(end - off - 4) < ln) break;
        Chain ch;
        if (!record(f + 4, ln, &ch, NULL)) break;
        if (ch.seq != exp_seq || ch.seq >= stop_seq || memcmp(ch.prev, h, 32) != 0) break;
        memcpy(h, ch.hash, 32);
        exp_seq++;
        count++;
        off += 4 + (Py_ssize_t)ln;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&last);
    return Py_BuildValue("(nny#)", off, count, (const char *)h, (Py_ssize_t)32);
}

/* chunks(data, end, step) -> [(start, stop), ...] | None: data[:end] cut at frame boundaries into
 * ranges of at least `step` bytes (the last may be shorter); None if the framing breaks. */
static PyObject *py_chunks(PyObject *self, PyObject *args) {
    Py_buffer data;
    Py_ssize_t end, step;
    if (!PyArg_ParseTuple(args, "y*nn", &data, &end, &step)) return NULL;
    if (end < 0 || end > data.len || step < 1) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "chunks: bad arguments");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    const unsigned char *buf = data.buf;
    Py_ssize_t o = 0, start = 0;
    while (out != NULL && o < end) {
        if (end - o < 4) { Py_CLEAR(out); break; }
        const unsigned char *f = buf + o;
        uint64_t ln = ((uint64_t)f[0] << 24) | ((uint64_t)f[1] << 16) | ((uint64_t)f[2] << 8) | f[3];
        if (ln == 0 || ln > MAX_FRAME || (uint64_t)(end - o - 4) < ln) { Py_CLEAR(out); break; }
        o += 4 + (Py_ssize_t)ln;
        if (o - start >= step || o == end) {
            PyObject *t = Py_BuildValue("(nn)", start, o);
            if (t == NULL || PyList_Append(out, t) < 0) Py_CLEAR(out);
            Py_XDECREF(t);
            start = o;
        }
    }
    PyBuffer_Release(&data);
    if (out == NULL && !PyErr_Occurred()) Py_RETURN_NONE;
    return out;
}

/* check(body) -> True when `body` is a record scan() would accept on its own (no chain): for tests. */
static PyObject *py_check(PyObject *self, PyObject *args) {
    Py_buffer body;
    if (!PyArg_ParseTuple(args, "y*", &body)) return NULL;
    Chain ch;
    int ok = body.len > 0 && body.len <= (Py_ssize_t)MAX_FRAME && record(body.buf, (uint64_t)body.len, &ch, NULL);
    PyBuffer_Release(&body);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"build", py_build, METH_VARARGS, "Encode, hash and frame a common record; None: let Python do it."},
    {"scan", py_scan, METH_VARARGS, "Walk the provably canonical, linked records of a buffer."},
    {"chunks", py_chunks, METH_VARARGS, "Frame-aligned ranges of a buffer; None if the framing breaks."},
    {"check", py_check, METH_VARARGS, "Whether scan() would accept this one record body."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }

/*
 * Hot loop of PII row rewriting (see dbgate/pii/rows.py, which holds the Python
 * reference implementation and says why).
 *
 * rewrite_rows(buf, start, end, positions, tables, fns, cache_value_bytes, cache_entries)
 * rewrite(body, positions, tables, fns, cache_value_bytes, cache_entries)
 *
 *   buf[start:end]  complete framed messages, as the relay reads them: a run of
 *              DataRows (other messages are copied as they are);
 *   body       one DataRow body: int16 column count, then per column an int32 length
 *              (-1: NULL) and the value;
 *   positions  tuple of increasing column indexes to replace;
 *   tables     tuple of dicts, one per position: raw value -> replacement value (the
 *              cache, shared with Python);
 *   fns        one per position: a callable raw value -> replacement value, or the
 *              tuple (prefix, keyed state, person, issued, issued_value_bytes, key,
 *              stats) of a hashed token, computed here with the BLAKE2b below
 *              (keyed_state() makes the state) and remembered in `issued` (an
 *              IssuedTokens, below) as Tokenizer.hasher does; stats: a bytearray(24)
 *              the rewriter keeps for the cache's hit counts.
 *
 * rewrite_rows returns the new messages, or None when nothing was replaced (every PII
 * value NULL); rewrite returns the new body, or `body` itself. Only values up to
 * cache_value_bytes are looked up and cached; a table that reaches cache_entries is
 * emptied first. A body that does not parse raises ValueError, as the Python version
 * does.
 *
 * A run costs one call: the plan is read once, each value is one dict lookup (and on a
 * miss one BLAKE2b compression per 128 bytes, two stores), and the output is written
 * into one buffer, with no Python object per row.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch((p), 1)
#else
#define PREFETCH(p) ((void)(p))
#endif

static inline int32_t
rd32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     (uint32_t)p[3]);
}

/* ------------------------------------------------------------------ BLAKE2b (RFC 7693)
 * Keyed, with a 16-byte personalization, as hashlib.blake2b(value, key=..., person=...,
 * digest_size=16) computes it: the hashed tokens of rows.py, without a Python call per
 * value. A property test checks it against hashlib byte for byte. */
static const uint64_t b2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL};
static const uint8_t b2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

typedef struct {
    uint64_t h[8], t[2];
    uint8_t b[128];
    size_t c;
} b2b_ctx;

static inline uint64_t
ld64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#define ROTR64(x, y) (((x) >> (y)) ^ ((x) << (64 - (y))))
#define B2B_G(a, b, c, d, x, y)                                                                    \
    do {                                                                                           \
        v[a] = v[a] + v[b] + x;                                                                    \
        v[d] = ROTR64(v[d] ^ v[a], 32);                                                            \
        v[c] = v[c] + v[d];                                                                        \
        v[b] = ROTR64(v[b] ^ v[c], 24);                                                            \
        v[a] = v[a] + v[b] + y;                                                                    \
        v[d] = ROTR64(v[d] ^ v[a], 16);                                                            \
        v[c] = v[c] + v[d];                                                                        \
        v[b] = ROTR64(v[b] ^ v[c], 63);                                                            \
    } while (0)

static void
b2b_compress_scalar(b2b_ctx *ctx, int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = ctx->h[i];
        v[i + 8] = b2b_iv[i];
    }
    v[12] ^= ctx->t[0];
    v[13] ^= ctx->t[1];
    if (last)
        v[14] = ~v[14];
    for (int i = 0; i < 16; i++)
        m[i] = ld64(&ctx->b[8 * i]);
    /* the twelve rounds unrolled: the message word indexes become constants (about a
     * third faster than a loop over b2b_sigma, which the compiler keeps) */
#define B2B_ROUND(r)                                                                               \
    do {                                                                                           \
        B2B_G(0, 4, 8, 12, m[b2b_sigma[r][0]], m[b2b_sigma[r][1]]);                                \
        B2B_G(1, 5, 9, 13, m[b2b_sigma[r][2]], m[b2b_sigma[r][3]]);                                \
        B2B_G(2, 6, 10, 14, m[b2b_sigma[r][4]], m[b2b_sigma[r][5]]);                               \
        B2B_G(3, 7, 11, 15, m[b2b_sigma[r][6]], m[b2b_sigma[r][7]]);                               \
        B2B_G(0, 5, 10, 15, m[b2b_sigma[r][8]], m[b2b_sigma[r][9]]);                               \
        B2B_G(1, 6, 11, 12, m[b2b_sigma[r][10]], m[b2b_sigma[r][11]]);                             \
        B2B_G(2, 7, 8, 13, m[b2b_sigma[r][12]], m[b2b_sigma[r][13]]);                              \
        B2B_G(3, 4, 9, 14, m[b2b_sigma[r][14]], m[b2b_sigma[r][15]]);                              \
    } while (0)
    B2B_ROUND(0);
    B2B_ROUND(1);
    B2B_ROUND(2);
    B2B_ROUND(3);
    B2B_ROUND(4);
    B2B_ROUND(5);
    B2B_ROUND(6);
    B2B_ROUND(7);
    B2B_ROUND(8);
    B2B_ROUND(9);
    B2B_ROUND(10);
    B2B_ROUND(11);
#undef B2B_ROUND
    for (int i = 0; i < 8; i++)
        ctx->h[i] ^= v[i] ^ v[i + 8];
}

#if defined(__GNUC__) && defined(__x86_64__)
#define B2B_AVX2 1
#include <immintrin.h>

/* The same compression with the 4x4 state in four AVX2 registers, one row each (the
 * layout of the BLAKE2 authors' SIMD code): the four G of a column step run at once,
 * then the rows are rotated so the diagonal step is columns too. About half the time
 * of the scalar version, whose 32 live 64-bit words spill out of 16 registers. Chosen
 * at import when the CPU has AVX2 (b2b_compress below); a test checks both against
 * hashlib. */
#define B2B_V4_G1(a, b, c, d, mw)                                                                  \
    do {                                                                                           \
        a = _mm256_add_epi64(_mm256_add_epi64(a, b), mw);                                          \
        d = _mm256_shuffle_epi32(_mm256_xor_si256(d, a), _MM_SHUFFLE(2, 3, 0, 1));                 \
        c = _mm256_add_epi64(c, d);                                                                \
        b = _mm256_shuffle_epi8(_mm256_xor_si256(b, c), r24);                                      \
    } while (0)
#define B2B_V4_G2(a, b, c, d, mw)                                                                  \
    do {                                                                                           \
        a = _mm256_add_epi64(_mm256_add_epi64(a, b), mw);                                          \
        d = _mm256_shuffle_epi8(_mm256_xor_si256(d, a), r16);                                      \
        c = _mm256_add_epi64(c, d);                                                                \
        b = _mm256_xor_si256(b, c);                                                                \
        b = _mm256_or_si256(_mm256_srli_epi64(b, 63), _mm256_add_epi64(b, b));                    \
    } while (0)
#define B2B_V4_MSG(i0, i1, i2, i3)                                                                 \
    _mm256_set_epi64x((long long)m[i3], (long long)m[i2], (long long)m[i1], (long long)m[i0])
#define B2B_V4_ROUND(r)                                                                            \
    do {                                                                                           \
        const uint8_t *s = b2b_sigma[r];                                                           \
        B2B_V4_G1(a, b, c, d, B2B_V4_MSG(s[0], s[2], s[4], s[6]));                                 \
        B2B_V4_G2(a, b, c, d, B2B_V4_MSG(s[1], s[3], s[5], s[7]));                                 \
        b = _mm256_permute4x64_epi64(b, _MM_SHUFFLE(0, 3, 2, 1));                                  \
        c = _mm256_permute4x64_epi64(c, _MM_SHUFFLE(1, 0, 3, 2));                                  \
        d = _mm256_permute4x64_epi64(d, _MM_SHUFFLE(2, 1, 0, 3));                                  \
        B2B_V4_G1(a, b, c, d, B2B_V4_MSG(s[8], s[10], s[12], s[14]));                              \
        B2B_V4_G2(a, b, c, d, B2B_V4_MSG(s[9], s[11], s[13], s[15]));                              \
        b = _mm256_permute4x64_epi64(b, _MM_SHUFFLE(2, 1, 0, 3));                                  \
        c = _mm256_permute4x64_epi64(c, _MM_SHUFFLE(1, 0, 3, 2));                                  \
        d = _mm256_permute4x64_epi64(d, _MM_SHUFFLE(0, 3, 2, 1));                                  \
    } while (0)

__attribute__((target("avx2"))) static void
b2b_compress_avx2(b2b_ctx *ctx, int last)
{
    const __m256i r16 = _mm256_setr_epi8(2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9,
                                         2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9);
    const __m256i r24 = _mm256_setr_epi8(3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10,
                                         3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10);
    uint64_t m[16];
    memcpy(m, ctx->b, sizeof m); /* x86 is little-endian, as BLAKE2b's words are */
    __m256i a = _mm256_loadu_si256((const __m256i *)&ctx->h[0]);
    __m256i b = _mm256_loadu_si256((const __m256i *)&ctx->h[4]);
    const __m256i a0 = a, b0 = b;
    __m256i c = _mm256_loadu_si256((const __m256i *)&b2b_iv[0]);
    __m256i d = _mm256_xor_si256(
        _mm256_loadu_si256((const __m256i *)&b2b_iv[4]),
        _mm256_set_epi64x(0, last ? -1LL : 0, (long long)ctx->t[1], (long long)ctx->t[0]));
    B2B_V4_ROUND(0);
    B2B_V4_ROUND(1);
    B2B_V4_ROUND(2);
    B2B_V4_ROUND(3);
    B2B_V4_ROUND(4);
    B2B_V4_ROUND(5);
    B2B_V4_ROUND(6);
    B2B_V4_ROUND(7);
    B2B_V4_ROUND(8);
    B2B_V4_ROUND(9);
    B2B_V4_ROUND(10);
    B2B_V4_ROUND(11);
    _mm256_storeu_si256((__m256i *)&ctx->h[0], _mm256_xor_si256(a0, _mm256_xor_si256(a, c)));
    _mm256_storeu_si256((__m256i *)&ctx->h[4], _mm256_xor_si256(b0, _mm256_xor_si256(b, d)));
}

/* Four values at once, one per 64-bit lane: the last (and only) block of each after
 * its key block, from four key states h[k], with byte counters t[k] (128 + length),
 * 16-byte digests out. Each lane is a hash of its own, so the rounds need no message
 * shuffles nor diagonal rotations: about a third of the time per value of the
 * one-at-a-time compressions. The row loop batches the values it must hash. */
#define B2B_X4_G(a, b, c, d, x, y)                                                                 \
    do {                                                                                           \
        v[a] = _mm256_add_epi64(_mm256_add_epi64(v[a], v[b]), x);                                  \
        v[d] = _mm256_shuffle_epi32(_mm256_xor_si256(v[d], v[a]), _MM_SHUFFLE(2, 3, 0, 1));        \
        v[c] = _mm256_add_epi64(v[c], v[d]);                                                       \
        v[b] = _mm256_shuffle_epi8(_mm256_xor_si256(v[b], v[c]), r24);                             \
        v[a] = _mm256_add_epi64(_mm256_add_epi64(v[a], v[b]), y);                                  \
        v[d] = _mm256_shuffle_epi8(_mm256_xor_si256(v[d], v[a]), r16);                             \
        v[c] = _mm256_add_epi64(v[c], v[d]);                                                       \
        v[b] = _mm256_xor_si256(v[b], v[c]);                                                       \
        v[b] = _mm256_or_si256(_mm256_srli_epi64(v[b], 63), _mm256_add_epi64(v[b], v[b]));         \
    } while (0)
#define B2B_X4_ROUND(r)                                                                            \
    do {                                                                                           \
        const uint8_t *s = b2b_sigma[r];                                                           \
        B2B_X4_G(0, 4, 8, 12, m[s[0]], m[s[1]]);                                                   \
        B2B_X4_G(1, 5, 9, 13, m[s[2]], m[s[3]]);                                                   \
        B2B_X4_G(2, 6, 10, 14, m[s[4]], m[s[5]]);                                                  \
        B2B_X4_G(3, 7, 11, 15, m[s[6]], m[s[7]]);                                                  \
        B2B_X4_G(0, 5, 10, 15, m[s[8]], m[s[9]]);                                                  \
        B2B_X4_G(1, 6, 11, 12, m[s[10]], m[s[11]]);                                                \
        B2B_X4_G(2, 7, 8, 13, m[s[12]], m[s[13]]);                                                 \
        B2B_X4_G(3, 4, 9, 14, m[s[14]], m[s[15]]);                                                 \
    } while (0)

__attribute__((target("avx2"))) static void
b2b_last_x4(uint8_t out[4][16], const uint64_t *const h[4], const uint8_t blk[4][128],
            const uint64_t t[4])
{
    const __m256i r16 = _mm256_setr_epi8(2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9,
                                         2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9);
    const __m256i r24 = _mm256_setr_epi8(3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10,
                                         3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10);
    __m256i m[16], v[16], h0, h1;
    for (int i = 0; i < 16; i++) {
        uint64_t w[4];
        for (int k = 0; k < 4; k++)
            memcpy(&w[k], blk[k] + 8 * i, 8); /* little-endian words */
        m[i] = _mm256_loadu_si256((const __m256i *)w);
    }
    for (int i = 0; i < 8; i++) {
        v[i] = _mm256_set_epi64x((long long)h[3][i], (long long)h[2][i], (long long)h[1][i],
                                 (long long)h[0][i]);
        v[i + 8] = _mm256_set1_epi64x((long long)b2b_iv[i]);
    }
    h0 = v[0];
    h1 = v[1];
    v[12] = _mm256_xor_si256(v[12], _mm256_loadu_si256((const __m256i *)t));
    v[14] = _mm256_xor_si256(v[14], _mm256_set1_epi64x(-1LL)); /* the last block */
    B2B_X4_ROUND(0);
    B2B_X4_ROUND(1);
    B2B_X4_ROUND(2);
    B2B_X4_ROUND(3);
    B2B_X4_ROUND(4);
    B2B_X4_ROUND(5);
    B2B_X4_ROUND(6);
    B2B_X4_ROUND(7);
    B2B_X4_ROUND(8);
    B2B_X4_ROUND(9);
    B2B_X4_ROUND(10);
    B2B_X4_ROUND(11);
    uint64_t w0[4], w1[4];
    _mm256_storeu_si256((__m256i *)w0, _mm256_xor_si256(h0, _mm256_xor_si256(v[0], v[8])));
    _mm256_storeu_si256((__m256i *)w1, _mm256_xor_si256(h1, _mm256_xor_si256(v[1], v[9])));
    for (int k = 0; k < 4; k++) {
        memcpy(out[k], &w0[k], 8);
        memcpy(out[k] + 8, &w1[k], 8);
    }
}
#endif

/* the compression in use: AVX2 when the CPU has it (set at import, see use_simd), and
 * whether the row loop hashes values four at a time (b2b_last_x4) */
static void (*b2b_compress)(b2b_ctx *, int) = b2b_compress_scalar;
static int batch_hashes = 0;

static int
simd_available(void)
{
#ifdef B2B_AVX2
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

/* use_simd(flag) -> whether the AVX2 compression is now in use (tests compare both) */
static PyObject *
use_simd(PyObject *self, PyObject *arg)
{
    int want = PyObject_IsTrue(arg);
    if (want < 0)
        return NULL;
#ifdef B2B_AVX2
    batch_hashes = want && simd_available();
    b2b_compress = batch_hashes ? b2b_compress_avx2 : b2b_compress_scalar;
    return PyBool_FromLong(batch_hashes);
#else
    return PyBool_FromLong(0);
#endif
}

static void
b2b_update(b2b_ctx *ctx, const uint8_t *in, size_t inlen)
{
    while (inlen > 0) {
        if (ctx->c == 128) {
            ctx->t[0] += ctx->c;
            if (ctx->t[0] < ctx->c)
                ctx->t[1]++;
            b2b_compress(ctx, 0);
            ctx->c = 0;
        }
        size_t take = 128 - ctx->c;
        if (take > inlen)
            take = inlen;
        memcpy(ctx->b + ctx->c, in, take);
        ctx->c += take;
        in += take;
        inlen -= take;
    }
}

/* the first outlen bytes of h, little-endian (BLAKE2b's output) */
static inline void
digest_out(uint8_t *out, size_t outlen, const uint64_t *h)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(out, h, outlen);
#else
    for (size_t i = 0; i < outlen; i++)
        out[i] = (uint8_t)((h[i >> 3] >> (8 * (i & 7))) & 0xFF);
#endif
}

/* 16 bytes -> 32 lower-case hex digits, two at a time from a table */
static void
hex32(char *o, const uint8_t *d)
{
    static char pairs[512];
    static int ready = 0;
    if (!ready) { /* under the GIL: every caller holds it */
        static const char hex[] = "0123456789abcdef";
        for (int i = 0; i < 256; i++) {
            pairs[2 * i] = hex[i >> 4];
            pairs[2 * i + 1] = hex[i & 15];
        }
        ready = 1;
    }
    for (int i = 0; i < 16; i++)
        memcpy(o + 2 * i, pairs + 2 * d[i], 2);
}

/* The state after the key block: the same for every value under one key and person,
 * so it is computed once per column (keyed_state) and each value costs one
 * compression per 128 bytes. 64 bytes: h[0..7], little-endian. */
static void
b2b_key_state(uint64_t *h, size_t outlen, const uint8_t *key, size_t keylen, const uint8_t *person)
{
    b2b_ctx ctx;
    for (int i = 0; i < 8; i++)
        ctx.h[i] = b2b_iv[i];
    ctx.h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ (uint64_t)outlen;
    ctx.h[6] ^= ld64(person);
    ctx.h[7] ^= ld64(person + 8);
    ctx.t[0] = 128;
    ctx.t[1] = 0;
    memset(ctx.b, 0, sizeof ctx.b);
    memcpy(ctx.b, key, keylen);
    b2b_compress(&ctx, 0);
    for (int i = 0; i < 8; i++)
        h[i] = ctx.h[i];
}

/* digest of `in` continuing from a key state (the key block already counted) */
static void
b2b_from_state(uint8_t *out, size_t outlen, const uint64_t *state, const uint8_t *in, size_t inlen)
{
    b2b_ctx ctx;
    for (int i = 0; i < 8; i++)
        ctx.h[i] = state[i];
    ctx.t[0] = 128;
    ctx.t[1] = 0;
    ctx.c = 0;
    b2b_update(&ctx, in, inlen);
    ctx.t[0] += ctx.c;
    if (ctx.t[0] < ctx.c)
        ctx.t[1]++;
    memset(ctx.b + ctx.c, 0, 128 - ctx.c);
    b2b_compress(&ctx, 1);
    digest_out(out, outlen, ctx.h);
}

/* the whole computation (RFC 7693): with an empty value the key block is the last */
static void
b2b_keyed(uint8_t *out, size_t outlen, const uint8_t *key, size_t keylen, const uint8_t *person,
          const uint8_t *in, size_t inlen)
{
    b2b_ctx ctx;
    for (int i = 0; i < 8; i++)
        ctx.h[i] = b2b_iv[i];
    ctx.h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ (uint64_t)outlen;
    ctx.h[6] ^= ld64(person);
    ctx.h[7] ^= ld64(person + 8);
    ctx.t[0] = ctx.t[1] = 0;
    memset(ctx.b, 0, sizeof ctx.b);
    memcpy(ctx.b, key, keylen);
    ctx.c = 128;
    b2b_update(&ctx, in, inlen);
    ctx.t[0] += ctx.c;
    if (ctx.t[0] < ctx.c)
        ctx.t[1]++;
    memset(ctx.b + ctx.c, 0, 128 - ctx.c);
    b2b_compress(&ctx, 1);
    digest_out(out, outlen, ctx.h);
}

/* keyed_state(key, person) -> the 64-byte state rewrite() takes in a hashed spec */
static PyObject *
keyed_state(PyObject *self, PyObject *args)
{
    Py_buffer key, person;
    if (!PyArg_ParseTuple(args, "y*y*", &key, &person))
        return NULL;
    PyObject *res = NULL;
    if (key.len < 1 || key.len > 64 || person.len != 16) {
        PyErr_SetString(PyExc_ValueError, "key must be 1..64 bytes, person 16");
    } else {
        uint64_t h[8];
        b2b_key_state(h, 16, key.buf, (size_t)key.len, person.buf);
        res = PyBytes_FromStringAndSize((const char *)h, sizeof h);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&person);
    return res;
}

/* hashed(prefix, key, person, value) -> prefix + hex(blake2b-128): one token, for tests */
static PyObject *
hashed_token(PyObject *self, PyObject *args)
{
    Py_buffer prefix, key, person, value;
    if (!PyArg_ParseTuple(args, "y*y*y*y*", &prefix, &key, &person, &value))
        return NULL;
    PyObject *res = NULL;
    if (key.len < 1 || key.len > 64 || person.len != 16) {
        PyErr_SetString(PyExc_ValueError, "key must be 1..64 bytes, person 16");
    } else {
        res = PyBytes_FromStringAndSize(NULL, prefix.len + 32);
        if (res != NULL) {
            uint8_t d[16];
            char *o = PyBytes_AS_STRING(res);
            b2b_keyed(d, 16, key.buf, (size_t)key.len, person.buf, value.buf, (size_t)value.len);
            memcpy(o, prefix.buf, (size_t)prefix.len);
            hex32(o + prefix.len, d);
        }
    }
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&key);
    PyBuffer_Release(&person);
    PyBuffer_Release(&value);
    return res;
}


/* ------------------------------------------------------------------ issued tokens
 * IssuedTokens(generation_size, generations): the store of dbgate/pii/issued.py (which
 * says why, and holds the Python reference). Each generation is an arena of entries
 * (16-byte digest, u8 prefix length, prefix, u32 value length, value; 8-byte aligned)
 * and an open-addressing index at most two thirds full of 8-byte slots: 32 bits of the
 * digest as a tag, and where the entry is (in 8-byte units, + 1; 0: empty). The
 * digest is a keyed PRF's output, so its bits are the hash. Small slots keep the index
 * of a 20,000-token generation in 256 KB (in the CPU's cache: with 24-byte slots its
 * random probes were a seventh of the time of streaming distinct e-mails). Dropping a
 * generation empties its arena and index for reuse: no Python object per token, none
 * freed one by one. */

typedef struct {
    uint32_t tag;
    uint32_t at; /* arena offset / 8 + 1; 0: empty */
} islot;

typedef struct {
    islot *index;
    size_t mask; /* index size - 1 (0: not allocated yet) */
    char *arena;
    size_t used, cap;
    Py_ssize_t count;
} igen;

typedef struct {
    PyObject_HEAD igen *gens;
    Py_ssize_t ngens, newest, live, generation_size;
    PyObject *on_forget;
} IssuedObject;

static PyTypeObject IssuedType;

/* an arena holds at most this many bytes (islot.at is 32 bits of 8-byte units) */
#define ARENA_MAX ((size_t)0xFFFFFFF0u * 8)

static inline uint64_t
digest_hash(const uint8_t *d)
{
    uint64_t h;
    memcpy(&h, d, 8);
    return h;
}

static inline uint32_t
digest_tag(const uint8_t *d)
{
    uint32_t t;
    memcpy(&t, d + 8, 4);
    return t;
}

static inline const unsigned char *
entry_at(igen *g, uint32_t at)
{
    return (const unsigned char *)g->arena + (size_t)(at - 1) * 8;
}

/* the slot of (prefix, digest) in g, or the empty slot where it would go */
static islot *
igen_slot(igen *g, const char *prefix, Py_ssize_t plen, const uint8_t *digest)
{
    size_t i = (size_t)digest_hash(digest) & g->mask;
    uint32_t tag = digest_tag(digest);
    for (;;) {
        islot *sl = &g->index[i];
        if (sl->at == 0)
            return sl;
        if (sl->tag == tag) {
            const unsigned char *e = entry_at(g, sl->at);
            if (memcmp(e, digest, 16) == 0 && e[16] == plen &&
                memcmp(e + 17, prefix, (size_t)plen) == 0)
                return sl;
        }
        i = (i + 1) & g->mask;
    }
}

static void
igen_clear(igen *g)
{
    if (g->index != NULL)
        memset(g->index, 0, (g->mask + 1) * sizeof(islot));
    g->used = 0;
    g->count = 0;
}

static void
igen_free(igen *g)
{
    PyMem_Free(g->index);
    PyMem_Free(g->arena);
    memset(g, 0, sizeof *g);
}

/* the value stored at an arena entry */
static inline const char *
entry_value(igen *g, uint32_t at, uint32_t *vlen)
{
    const unsigned char *e = entry_at(g, at);
    const unsigned char *v = e + 17 + e[16];
    *vlen = ((uint32_t)v[0] << 24) | ((uint32_t)v[1] << 16) | ((uint32_t)v[2] << 8) | v[3];
    return (const char *)v + 4;
}

/* Start loading the index slot a digest will probe (its cache line is likely cold):
 * the caller has the token's hex to write meanwhile. */
static inline void
issued_prefetch(IssuedObject *self, const uint8_t *digest)
{
    if (self->ngens == 0)
        return;
    igen *g = &self->gens[self->newest];
    if (g->mask != 0)
        PREFETCH(&g->index[(size_t)digest_hash(digest) & g->mask]);
}

/* Remember (prefix, digest) -> value in the newest generation, starting a new one
 * first when it is full (or its arena is); on_forget() after a generation was
 * dropped. 0, or -1. */
static int
issued_add(IssuedObject *self, const char *prefix, Py_ssize_t plen, const uint8_t *digest,
           const char *value, Py_ssize_t vlen)
{
    if (self->ngens == 0)
        return 0;
    if (plen > 255 || vlen > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "token prefix or value too long to remember");
        return -1;
    }
    size_t need = (16 + 1 + (size_t)plen + 4 + (size_t)vlen + 7) & ~(size_t)7;
    int forgot = 0;
    igen *g = &self->gens[self->newest];
    if (g->count >= self->generation_size || g->used + need > ARENA_MAX) {
        self->newest = (self->newest + 1) % self->ngens;
        if (self->live < self->ngens)
            self->live++;
        else
            forgot = 1; /* the oldest generation is reused as the newest */
        g = &self->gens[self->newest];
        igen_clear(g);
    }
    if (g->mask == 0) {
        size_t size = 16;
        while (2 * size < 3 * (size_t)self->generation_size + 2)
            size *= 2;
        g->index = PyMem_Calloc(size, sizeof(islot));
        if (g->index == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        g->mask = size - 1;
    }
    islot *sl = igen_slot(g, prefix, plen, digest);
    if (sl->at != 0) { /* issued again in this generation: keep one entry */
        uint32_t have;
        const char *v = entry_value(g, sl->at, &have);
        if (have == (uint32_t)vlen && memcmp(v, value, (size_t)vlen) == 0)
            goto done;
    }
    if (g->used + need > g->cap) {
        size_t cap = g->cap ? g->cap : 4096;
        while (cap < g->used + need)
            cap *= 2;
        char *a = PyMem_Realloc(g->arena, cap);
        if (a == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        g->arena = a;
        g->cap = cap;
    }
    unsigned char *e = (unsigned char *)g->arena + g->used;
    memcpy(e, digest, 16);
    e[16] = (unsigned char)plen;
    memcpy(e + 17, prefix, (size_t)plen);
    unsigned char *v = e + 17 + plen;
    v[0] = (unsigned char)((uint32_t)vlen >> 24);
    v[1] = (unsigned char)((uint32_t)vlen >> 16);
    v[2] = (unsigned char)((uint32_t)vlen >> 8);
    v[3] = (unsigned char)vlen;
    memcpy(v + 4, value, (size_t)vlen);
    if (sl->at == 0) {
        sl->tag = digest_tag(digest);
        g->count++;
    }
    sl->at = (uint32_t)(g->used / 8 + 1);
    g->used += need;
done:
    if (forgot && self->on_forget != NULL && self->on_forget != Py_None) {
        PyObject *r = PyObject_CallNoArgs(self->on_forget);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* token bytes -> (prefix, digest); 0 when it is not prefix + 32 lower-case hex digits */
static int
split_token(const char *tok, Py_ssize_t n, Py_ssize_t *plen, uint8_t *digest)
{
    if (n < 32 || n - 32 > 255)
        return 0;
    const char *h = tok + n - 32;
    for (int i = 0; i < 32; i++) {
        char c = h[i];
        int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (v < 0)
            return 0;
        if (i % 2 == 0)
            digest[i / 2] = (uint8_t)(v << 4);
        else
            digest[i / 2] |= (uint8_t)v;
    }
    *plen = n - 32;
    return 1;
}

static PyObject *
Issued_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"generation_size", "generations", NULL};
    Py_ssize_t size, ngens;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nn", kwlist, &size, &ngens))
        return NULL;
    if (size < 1 || ngens < 0 || ngens > 1000000) {
        PyErr_SetString(PyExc_ValueError, "generation_size must be >= 1 and generations >= 0");
        return NULL;
    }
    IssuedObject *self = (IssuedObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->generation_size = size;
    self->ngens = ngens;
    self->live = 1;
    if (ngens > 0) {
        self->gens = PyMem_Calloc((size_t)ngens, sizeof(igen));
        if (self->gens == NULL) {
            Py_DECREF(self);
            return PyErr_NoMemory();
        }
    }
    self->on_forget = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static int
Issued_traverse(IssuedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->on_forget);
    return 0;
}

static int
Issued_clear(IssuedObject *self)
{
    Py_CLEAR(self->on_forget);
    return 0;
}

static void
Issued_dealloc(IssuedObject *self)
{
    PyObject_GC_UnTrack(self);
    Issued_clear(self);
    for (Py_ssize_t i = 0; i < self->ngens && self->gens != NULL; i++)
        igen_free(&self->gens[i]);
    PyMem_Free(self->gens);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Issued_add(IssuedObject *self, PyObject *args)
{
    Py_buffer token, value;
    if (!PyArg_ParseTuple(args, "y*y*", &token, &value))
        return NULL;
    PyObject *res = NULL;
    Py_ssize_t plen;
    uint8_t digest[16];
    if (!split_token(token.buf, token.len, &plen, digest))
        PyErr_SetString(PyExc_ValueError, "a hashed token ends with 32 lower-case hex digits");
    else if (issued_add(self, token.buf, plen, digest, value.buf, value.len) == 0)
        res = Py_NewRef(Py_None);
    PyBuffer_Release(&token);
    PyBuffer_Release(&value);
    return res;
}

static PyObject *
Issued_get(IssuedObject *self, PyObject *arg)
{
    char *tok;
    Py_ssize_t n, plen;
    uint8_t digest[16];
    if (PyBytes_AsStringAndSize(arg, &tok, &n) < 0)
        return NULL;
    if (self->ngens == 0 || !split_token(tok, n, &plen, digest))
        Py_RETURN_NONE;
    for (Py_ssize_t k = 0; k < self->live; k++) {
        igen *g = &self->gens[(self->newest - k + self->ngens) % self->ngens];
        if (g->mask == 0)
            continue;
        islot *sl = igen_slot(g, tok, plen, digest);
        if (sl->at != 0) {
            uint32_t vlen;
            const char *v = entry_value(g, sl->at, &vlen);
            return PyBytes_FromStringAndSize(v, vlen);
        }
    }
    Py_RETURN_NONE;
}

static Py_ssize_t
Issued_len(IssuedObject *self)
{
    Py_ssize_t n = 0;
    for (Py_ssize_t k = 0; k < self->live && self->ngens > 0; k++)
        n += self->gens[(self->newest - k + self->ngens) % self->ngens].count;
    return n;
}

static PyObject *
Issued_get_on_forget(IssuedObject *self, void *closure)
{
    return Py_NewRef(self->on_forget ? self->on_forget : Py_None);
}

static int
Issued_set_on_forget(IssuedObject *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "on_forget cannot be deleted (set None)");
        return -1;
    }
    Py_XSETREF(self->on_forget, Py_NewRef(value));
    return 0;
}

static PyObject *
Issued_get_size(IssuedObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->generation_size);
}

static PyObject *
Issued_get_ngens(IssuedObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->ngens);
}

static PyMethodDef Issued_methods[] = {
    {"add", (PyCFunction)Issued_add, METH_VARARGS,
     "Remember token (prefix + 32 lower-case hex digits) for value."},
    {"get", (PyCFunction)Issued_get, METH_O,
     "The value of a token, or None when it was not issued or is forgotten."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Issued_getset[] = {
    {"on_forget", (getter)Issued_get_on_forget, (setter)Issued_set_on_forget,
     "Called (no arguments) after a generation was dropped.", NULL},
    {"generation_size", (getter)Issued_get_size, NULL, "Tokens per generation.", NULL},
    {"generations", (getter)Issued_get_ngens, NULL, "Generations kept.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Issued_as_sequence = {.sq_length = (lenfunc)Issued_len};

static PyTypeObject IssuedType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dbgate.pii._rows.IssuedTokens",
    .tp_doc = "Issued hashed tokens -> values, in generations (see dbgate/pii/issued.py).",
    .tp_basicsize = sizeof(IssuedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Issued_new,
    .tp_dealloc = (destructor)Issued_dealloc,
    .tp_traverse = (traverseproc)Issued_traverse,
    .tp_clear = (inquiry)Issued_clear,
    .tp_methods = Issued_methods,
    .tp_getset = Issued_getset,
    .tp_as_sequence = &Issued_as_sequence,
};

/* ------------------------------------------------------------------ the plan of a call */

/* Caching a hashed token pays only when values repeat: a hit saves a BLAKE2b and a
 * store of the issued token, a miss costs a lookup, two objects and a store more.
 * Each hashed column of a rewriter counts its lookups and hits in windows of
 * CACHE_WINDOW; when fewer than a third hit (a million distinct e-mails), the next
 * CACHE_SKIP values are hashed without the cache (and without any Python object),
 * then it is tried again. The tokens are the same either way. */
#define CACHE_WINDOW 1024
#define CACHE_SKIP 16384
struct stats {
    int64_t seen, hits, skip;
};

/* One PII column: where it is, its cache, and how to replace a value. */
typedef struct {
    long position;
    PyObject *table; /* borrowed: raw value -> replacement value */
    PyObject *fn;    /* borrowed: a callable, or NULL for a hashed token computed here */
    /* a hashed token (fn == NULL) */
    const char *prefix;
    Py_ssize_t plen;
    uint64_t state[8];
    PyObject *key, *person; /* borrowed: the whole computation, for the empty value */
    IssuedObject *issued;   /* borrowed: where the token is remembered */
    Py_ssize_t issued_value_bytes;
    struct stats *stats; /* in the spec's bytearray, kept across calls */
} slot_t;

/* A hashed token whose hex digits wait in the output for the batch's BLAKE2b. */
typedef struct {
    slot_t *slot;
    const char *raw; /* the value, in the caller's buffer */
    Py_ssize_t len;
    Py_ssize_t at;   /* where its 32 hex digits go in the output */
    PyObject *key;   /* the value as bytes when it is to be cached, else NULL */
} pending_t;

typedef struct {
    slot_t *slots;
    Py_ssize_t n;
    Py_ssize_t cache_value_bytes, cache_entries;
    pending_t batch[4];
    int nbatch;
} plan_t;

static void
plan_free(plan_t *plan)
{
    for (int i = 0; i < plan->nbatch; i++)
        Py_XDECREF(plan->batch[i].key);
    plan->nbatch = 0;
    PyMem_Free(plan->slots);
    plan->slots = NULL;
}

/* positions, tables and fns as rewrite() takes them -> plan (0), or -1 with an error */
static int
plan_parse(plan_t *plan, PyObject *positions, PyObject *tables, PyObject *fns,
           Py_ssize_t cache_value_bytes, Py_ssize_t cache_entries)
{
    Py_ssize_t n = PyTuple_GET_SIZE(positions);
    plan->slots = NULL;
    plan->nbatch = 0;
    plan->n = n;
    plan->cache_value_bytes = cache_value_bytes;
    plan->cache_entries = cache_entries;
    if (PyTuple_GET_SIZE(tables) != n || PyTuple_GET_SIZE(fns) != n) {
        PyErr_SetString(PyExc_ValueError, "positions, tables and fns must have one item each");
        return -1;
    }
    if (n == 0)
        return 0;
    plan->slots = PyMem_Calloc((size_t)n, sizeof(slot_t));
    if (plan->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    long last = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        slot_t *s = &plan->slots[i];
        s->position = PyLong_AsLong(PyTuple_GET_ITEM(positions, i));
        if (s->position == -1 && PyErr_Occurred())
            goto fail;
        if (s->position <= last) {
            PyErr_SetString(PyExc_ValueError, "positions must increase");
            goto fail;
        }
        last = s->position;
        s->table = PyTuple_GET_ITEM(tables, i);
        if (!PyDict_Check(s->table)) {
            PyErr_SetString(PyExc_TypeError, "a cache table must be a dict");
            goto fail;
        }
        PyObject *fn = PyTuple_GET_ITEM(fns, i);
        if (!PyTuple_Check(fn)) {
            s->fn = fn;
            continue;
        }
        /* (prefix, keyed state, person, issued, issued_value_bytes, key, stats) */
        if (PyTuple_GET_SIZE(fn) != 7) {
            PyErr_SetString(PyExc_ValueError, "a hashed spec has 7 items");
            goto fail;
        }
        PyObject *prefix = PyTuple_GET_ITEM(fn, 0), *state = PyTuple_GET_ITEM(fn, 1);
        PyObject *issued = PyTuple_GET_ITEM(fn, 3), *stats = PyTuple_GET_ITEM(fn, 6);
        s->person = PyTuple_GET_ITEM(fn, 2);
        s->key = PyTuple_GET_ITEM(fn, 5);
        if (!PyBytes_Check(prefix) || PyBytes_GET_SIZE(prefix) > 255 || !PyBytes_Check(state) ||
            PyBytes_GET_SIZE(state) != 64 || !PyBytes_Check(s->person) ||
            PyBytes_GET_SIZE(s->person) != 16 || !PyBytes_Check(s->key) ||
            PyBytes_GET_SIZE(s->key) < 1 || PyBytes_GET_SIZE(s->key) > 64 ||
            !PyObject_TypeCheck(issued, &IssuedType) || !PyByteArray_Check(stats) ||
            PyByteArray_GET_SIZE(stats) != sizeof(struct stats)) {
            PyErr_SetString(PyExc_ValueError,
                            "a hashed spec needs a prefix, the 64-byte keyed state, a 16-byte "
                            "person, an IssuedTokens, the key and a 24-byte bytearray");
            goto fail;
        }
        s->prefix = PyBytes_AS_STRING(prefix);
        s->plen = PyBytes_GET_SIZE(prefix);
        memcpy(s->state, PyBytes_AS_STRING(state), sizeof s->state);
        s->issued = (IssuedObject *)issued;
        s->stats = (struct stats *)PyByteArray_AS_STRING(stats);
        s->issued_value_bytes = PyLong_AsSsize_t(PyTuple_GET_ITEM(fn, 4));
        if (PyErr_Occurred())
            goto fail;
    }
    return 0;
fail:
    plan_free(plan);
    return -1;
}

/* ------------------------------------------------------------------ output */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} wbuf;

static int
wb_reserve(wbuf *w, Py_ssize_t extra)
{
    if (w->len + extra <= w->cap)
        return 0;
    Py_ssize_t cap = w->cap ? w->cap : 256;
    while (cap < w->len + extra) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *p = PyMem_Realloc(w->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->p = p;
    w->cap = cap;
    return 0;
}

static inline int
wb_put(wbuf *w, const void *src, Py_ssize_t n)
{
    if (wb_reserve(w, n) < 0)
        return -1;
    memcpy(w->p + w->len, src, (size_t)n);
    w->len += n;
    return 0;
}

static inline void
put32(unsigned char *o, uint32_t n)
{
    o[0] = (unsigned char)(n >> 24);
    o[1] = (unsigned char)(n >> 16);
    o[2] = (unsigned char)(n >> 8);
    o[3] = (unsigned char)n;
}

/* a replacement value with its int32 length word */
static int
wb_value(wbuf *w, PyObject *value)
{
    if (!PyBytes_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "a PII replacement must be bytes");
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    if (n > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "a PII replacement is over 2 GB");
        return -1;
    }
    if (wb_reserve(w, n + 4) < 0)
        return -1;
    put32((unsigned char *)w->p + w->len, (uint32_t)n);
    memcpy(w->p + w->len + 4, PyBytes_AS_STRING(value), (size_t)n);
    w->len += n + 4;
    return 0;
}

/* ------------------------------------------------------------------ replacements */

/* After a token's hex is in the output: remember it as issued, and cache it (taking
 * the reference to key, which may be NULL: not cached). */
static int
token_made(plan_t *plan, slot_t *s, const uint8_t *d, const char *raw, Py_ssize_t len,
           wbuf *w, Py_ssize_t at, PyObject *key)
{
    /* issued_add may call on_forget, which empties the cache tables: the new token
     * goes into the cache after it */
    if (len <= s->issued_value_bytes && issued_add(s->issued, s->prefix, s->plen, d, raw, len) < 0)
        goto fail;
    if (key != NULL) {
        PyObject *value = PyBytes_FromStringAndSize(w->p + at - s->plen, s->plen + 32);
        if (value == NULL)
            goto fail;
        if (PyDict_GET_SIZE(s->table) >= plan->cache_entries)
            PyDict_Clear(s->table);
        int rc = PyDict_SetItem(s->table, key, value);
        Py_DECREF(value);
        if (rc < 0)
            goto fail;
        Py_DECREF(key);
    }
    return 0;
fail:
    Py_XDECREF(key);
    return -1;
}

/* Hash the batched values (four at a time, see b2b_last_x4) and finish their tokens. */
static int
flush_hashes(plan_t *plan, wbuf *w)
{
    int n = plan->nbatch;
    if (n == 0)
        return 0;
    int rc = 0;
#ifdef B2B_AVX2
    uint8_t blk[4][128], d[4][16];
    const uint64_t *h[4];
    uint64_t t[4];
    for (int k = 0; k < 4; k++) { /* a short batch repeats its first value */
        pending_t *it = &plan->batch[k < n ? k : 0];
        memset(blk[k], 0, 128);
        memcpy(blk[k], it->raw, (size_t)it->len);
        h[k] = it->slot->state;
        t[k] = 128 + (uint64_t)it->len;
    }
    b2b_last_x4(d, h, blk, t);
    for (int k = 0; k < n; k++) /* their index slots load while the hex is written */
        if (plan->batch[k].len <= plan->batch[k].slot->issued_value_bytes)
            issued_prefetch(plan->batch[k].slot->issued, d[k]);
    plan->nbatch = 0; /* the keys are handed over below, whatever happens */
    for (int k = 0; k < n; k++) {
        pending_t *it = &plan->batch[k];
        if (rc < 0) {
            Py_XDECREF(it->key);
            continue;
        }
        hex32(w->p + it->at, d[k]);
        rc = token_made(plan, it->slot, d[k], it->raw, it->len, w, it->at, it->key);
    }
#else
    plan->nbatch = 0;
    (void)w;
    PyErr_SetString(PyExc_SystemError, "no batched hashing in this build");
    rc = -1;
#endif
    return rc;
}

/* Write the hashed token of raw (prefix + 32 hex digits, with its length word) to w,
 * remember it as issued and cache it (taking the reference to key, NULL: not
 * cached). A value of 1 to 128 bytes (one block) waits in the batch for its hex when
 * batching is on. */
static int
emit_hashed(plan_t *plan, slot_t *s, const char *raw, Py_ssize_t len, wbuf *w, PyObject *key)
{
    Py_ssize_t n = s->plen + 32;
    if (wb_reserve(w, n + 4) < 0) {
        Py_XDECREF(key);
        return -1;
    }
    char *o = w->p + w->len;
    put32((unsigned char *)o, (uint32_t)n);
    memcpy(o + 4, s->prefix, (size_t)s->plen);
    Py_ssize_t at = w->len + 4 + s->plen;
    w->len += n + 4;
    if (batch_hashes && len >= 1 && len <= 128) {
        pending_t *it = &plan->batch[plan->nbatch++];
        it->slot = s;
        it->raw = raw;
        it->len = len;
        it->at = at;
        it->key = key;
        return plan->nbatch == 4 ? flush_hashes(plan, w) : 0;
    }
    uint8_t d[16];
    if (len > 0) {
        b2b_from_state(d, 16, s->state, (const uint8_t *)raw, (size_t)len);
    } else { /* the key block is the last block: no shortcut */
        b2b_keyed(d, 16, (const uint8_t *)PyBytes_AS_STRING(s->key),
                  (size_t)PyBytes_GET_SIZE(s->key), (const uint8_t *)PyBytes_AS_STRING(s->person),
                  NULL, 0);
    }
    if (len <= s->issued_value_bytes)
        issued_prefetch(s->issued, d);
    hex32(w->p + at, d);
    return token_made(plan, s, d, raw, len, w, at, key);
}

/* Write the replacement of raw in slot s (with its length word) to w: from the cache,
 * or made (and cached). 0, or -1 with an error. */
static int
emit(plan_t *plan, slot_t *s, const char *raw, Py_ssize_t len, wbuf *w)
{
    PyObject *key = NULL, *value = NULL;
    int cacheable = len <= plan->cache_value_bytes; /* a longer value is never cached */
    struct stats *st = s->fn == NULL ? s->stats : NULL;
    if (cacheable && st != NULL && st->skip > 0) {
        st->skip--;
        cacheable = 0;
    }
    if (cacheable) {
        key = PyBytes_FromStringAndSize(raw, len);
        if (key == NULL)
            return -1;
        PyObject *hit = PyDict_GetItemWithError(s->table, key);
        if (st != NULL && ++st->seen == CACHE_WINDOW) {
            if (3 * (st->hits + (hit != NULL)) < CACHE_WINDOW)
                st->skip = CACHE_SKIP;
            st->seen = st->hits = 0;
        } else if (st != NULL && hit != NULL) {
            st->hits++;
        }
        if (hit != NULL) {
            int rc = wb_value(w, hit);
            Py_DECREF(key);
            return rc;
        }
        if (PyErr_Occurred())
            goto fail;
    }
    if (s->fn == NULL)
        return emit_hashed(plan, s, raw, len, w, key); /* takes key */
    if (key == NULL && (key = PyBytes_FromStringAndSize(raw, len)) == NULL)
        return -1;
    value = PyObject_CallOneArg(s->fn, key);
    if (value == NULL || wb_value(w, value) < 0)
        goto fail;
    if (cacheable) {
        if (PyDict_GET_SIZE(s->table) >= plan->cache_entries)
            PyDict_Clear(s->table);
        if (PyDict_SetItem(s->table, key, value) < 0)
            goto fail;
    }
    Py_XDECREF(value);
    Py_XDECREF(key);
    return 0;
fail:
    Py_XDECREF(value);
    Py_XDECREF(key);
    return -1;
}

/* ------------------------------------------------------------------ rows */

/* Write the rewritten DataRow body p[0:size] to w; *replaced counts the values
 * replaced. 0, or -1 with an error (ValueError for a body that does not parse). */
static int
rewrite_body(plan_t *plan, const unsigned char *p, Py_ssize_t size, wbuf *w, Py_ssize_t *replaced)
{
    if (plan->n == 0 || size < 2)
        return wb_put(w, p, size);
    long ncols = ((long)p[0] << 8) | p[1];
    Py_ssize_t pos = 2, copied = 0;
    long col = 0;
    Py_ssize_t slot = 0;
    long target = plan->slots[0].position;
    while (slot < plan->n && col < ncols) {
        if (pos + 4 > size)
            goto bad;
        int32_t len = rd32(p + pos);
        if (col == target) {
            if (len >= 0) {
                Py_ssize_t end = pos + 4 + len;
                if (end > size)
                    goto bad;
                if (wb_put(w, p + copied, pos - copied) < 0 ||
                    emit(plan, &plan->slots[slot], (const char *)p + pos + 4, len, w) < 0)
                    return -1;
                (*replaced)++;
                copied = pos = end;
            } else {
                pos += 4;
            }
            slot++;
            if (slot < plan->n)
                target = plan->slots[slot].position;
        } else {
            pos += 4 + (len > 0 ? len : 0);
            if (pos > size)
                goto bad;
        }
        col++;
    }
    return wb_put(w, p + copied, size - copied);
bad:
    PyErr_SetString(PyExc_ValueError, "DataRow value runs past the body");
    return -1;
}

/* rewrite(body, positions, tables, fns, cache_value_bytes, cache_entries): one row */
static PyObject *
rewrite(PyObject *self, PyObject *args)
{
    PyObject *body, *positions, *tables, *fns;
    Py_ssize_t cache_value_bytes, cache_entries;
    if (!PyArg_ParseTuple(args, "SO!O!O!nn", &body, &PyTuple_Type, &positions, &PyTuple_Type,
                          &tables, &PyTuple_Type, &fns, &cache_value_bytes, &cache_entries))
        return NULL;
    plan_t plan;
    if (plan_parse(&plan, positions, tables, fns, cache_value_bytes, cache_entries) < 0)
        return NULL;
    wbuf w = {NULL, 0, 0};
    Py_ssize_t replaced = 0;
    PyObject *res = NULL;
    if (rewrite_body(&plan, (const unsigned char *)PyBytes_AS_STRING(body),
                     PyBytes_GET_SIZE(body), &w, &replaced) == 0 &&
        flush_hashes(&plan, &w) == 0) {
        if (replaced == 0) {
            Py_INCREF(body);
            res = body;
        } else {
            res = PyBytes_FromStringAndSize(w.p, w.len);
        }
    }
    PyMem_Free(w.p);
    plan_free(&plan);
    return res;
}

/* rewrite_rows(buf, start, end, positions, tables, fns, cache_value_bytes, cache_entries):
 * the complete messages buf[start:end], DataRows rewritten; None when nothing changed */
static PyObject *
rewrite_rows(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t start, end;
    PyObject *positions, *tables, *fns;
    Py_ssize_t cache_value_bytes, cache_entries;
    if (!PyArg_ParseTuple(args, "y*nnO!O!O!nn", &buf, &start, &end, &PyTuple_Type, &positions,
                          &PyTuple_Type, &tables, &PyTuple_Type, &fns, &cache_value_bytes,
                          &cache_entries))
        return NULL;
    PyObject *res = NULL;
    wbuf w = {NULL, 0, 0};
    plan_t plan = {NULL, 0, 0, 0};
    if (start < 0 || end > buf.len || start > end) {
        PyErr_SetString(PyExc_ValueError, "start and end must lie within the buffer");
        goto done;
    }
    if (plan_parse(&plan, positions, tables, fns, cache_value_bytes, cache_entries) < 0)
        goto done;
    if (plan.n == 0) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    const unsigned char *p = (const unsigned char *)buf.buf;
    /* tokens are usually longer than the values they replace */
    Py_ssize_t size = end - start;
    if (wb_reserve(&w, size + (size < 65536 ? size : 65536) + 256) < 0)
        goto done;
    Py_ssize_t pos = start, replaced = 0;
    while (pos < end) {
        if (end - pos < 5)
            goto incomplete;
        uint32_t len = ((uint32_t)p[pos + 1] << 24) | ((uint32_t)p[pos + 2] << 16) |
                       ((uint32_t)p[pos + 3] << 8) | (uint32_t)p[pos + 4];
        if (len < 4 || (Py_ssize_t)len > end - pos - 1)
            goto incomplete;
        Py_ssize_t next = pos + 1 + (Py_ssize_t)len;
        if (p[pos] != 'D') {
            if (wb_put(&w, p + pos, next - pos) < 0)
                goto done;
        } else {
            Py_ssize_t hdr = w.len;
            if (wb_put(&w, p + pos, 5) < 0 ||
                rewrite_body(&plan, p + pos + 5, (Py_ssize_t)len - 4, &w, &replaced) < 0)
                goto done;
            Py_ssize_t n = w.len - hdr - 1;
            if (n > 0x7FFFFFFF) {
                PyErr_SetString(PyExc_ValueError, "a rewritten DataRow is over 2 GB");
                goto done;
            }
            put32((unsigned char *)w.p + hdr + 1, (uint32_t)n);
        }
        pos = next;
    }
    if (flush_hashes(&plan, &w) < 0)
        goto done;
    res = replaced ? PyBytes_FromStringAndSize(w.p, w.len) : Py_NewRef(Py_None);
    goto done;
incomplete:
    PyErr_SetString(PyExc_ValueError, "incomplete message in DataRow buffer");
done:
    PyMem_Free(w.p);
    plan_free(&plan);
    PyBuffer_Release(&buf);
    return res;
}

static PyMethodDef methods[] = {
    {"rewrite", rewrite, METH_VARARGS, "Rewrite the PII columns of one DataRow body."},
    {"rewrite_rows", rewrite_rows, METH_VARARGS,
     "Rewrite the PII columns of the DataRows in a run of complete messages."},
    {"hashed_token", hashed_token, METH_VARARGS, "prefix + hex(keyed BLAKE2b-128 of value)."},
    {"keyed_state", keyed_state, METH_VARARGS, "BLAKE2b-128 state after a key block."},
    {"use_simd", use_simd, METH_O, "Use the AVX2 BLAKE2b when the CPU has it; whether it is."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rows", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__rows(void)
{
    if (PyType_Ready(&IssuedType) < 0)
        return NULL;
#ifdef B2B_AVX2
    if (simd_available()) {
        b2b_compress = b2b_compress_avx2;
        batch_hashes = 1;
    }
#endif
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "IssuedTokens", (PyObject *)&IssuedType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

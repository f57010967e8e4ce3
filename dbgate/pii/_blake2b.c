/*
 * Keyed BLAKE2b (RFC 7693) for hashed PII tokens: the same bytes as
 * hashlib.blake2b(value, key=..., person=..., digest_size=16), which a test checks.
 *
 * Three compressions: the portable one; with AVX2 one row of the state per register
 * (the BLAKE2 authors' layout) for a value at a time; and b2b_last_x4, four values at
 * once, one per 64-bit lane, which the row loop uses for values of one block (the
 * rounds need no message shuffles nor diagonal rotations, about a third of the time
 * per value). b2b_use_simd() picks at import (dbgate/pii/_rows.c) what the CPU has.
 */
#include <string.h>

#include "_blake2b.h"

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

#ifdef B2B_AVX2
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

__attribute__((target("avx2"))) void
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
int b2b_batch = 0;

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

/* Use the AVX2 compressions (when the CPU has them) or the portable one; whether
 * AVX2 is now in use. */
int
b2b_use_simd(int want)
{
#ifdef B2B_AVX2
    b2b_batch = want && simd_available();
    b2b_compress = b2b_batch ? b2b_compress_avx2 : b2b_compress_scalar;
    return b2b_batch;
#else
    (void)want;
    return 0;
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
void
b2b_hex32(char *o, const uint8_t *d)
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
void
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
void
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
void
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


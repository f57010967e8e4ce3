/*
 * Keyed BLAKE2b-128 for hashed PII tokens (see _blake2b.c), shared by the PII row loop
 * (_rows.c). Not thread-safe where noted: callers hold the GIL.
 */
#ifndef DBGATE_PII_BLAKE2B_H
#define DBGATE_PII_BLAKE2B_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) && defined(__x86_64__)
#define B2B_AVX2 1 /* the AVX2 compressions are built (used when the CPU has AVX2) */
#endif

/* The state after the key block, for a key and a 16-byte personalization: the same for
 * every value under them, so computed once per column. 64 bytes: h[0..7]. */
void b2b_key_state(uint64_t *h, size_t outlen, const uint8_t *key, size_t keylen,
                   const uint8_t *person);

/* The digest of `in` continuing from a key state (in must not be empty: an empty
 * value's key block is its last, see b2b_keyed). */
void b2b_from_state(uint8_t *out, size_t outlen, const uint64_t *state, const uint8_t *in,
                    size_t inlen);

/* The whole computation. */
void b2b_keyed(uint8_t *out, size_t outlen, const uint8_t *key, size_t keylen,
               const uint8_t *person, const uint8_t *in, size_t inlen);

/* Whether b2b_last_x4 may be called (AVX2 built, present and chosen). */
extern int b2b_batch;

#ifdef B2B_AVX2
/* Four values of 1..128 bytes at once: each the last block after its key block, from
 * the key states h[k], with byte counters t[k] = 128 + length; 16-byte digests. */
void b2b_last_x4(uint8_t out[4][16], const uint64_t *const h[4], const uint8_t blk[4][128],
                 const uint64_t t[4]);
#endif

/* Use the AVX2 compressions when the CPU has them (want), else the portable one;
 * returns whether AVX2 is now in use. Call with the GIL held. */
int b2b_use_simd(int want);

/* 16 bytes -> 32 lower-case hex digits. */
void b2b_hex32(char *o, const uint8_t *d);

#endif

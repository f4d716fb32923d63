/* The compiled inner loop of tts.wavenet.FastGenerator in C: the same recursion as the numba kernel
 * (tts/_wavenet_kernel.py). tts/_wavenet_c.py compiles it on first use with the machine's C compiler
 * (-O3 -march=native -ffast-math), for one model size: -DGLOTTIS_R=residual -DGLOTTIS_S=skip
 * -DGLOTTIS_K=classes, so every loop has a known length. It is loaded through ctypes.
 *
 * Why a second implementation: numba's LLVM keeps a mat-vec's sums in memory, so the 64x64 gate mat-vec
 * costs ~235 ns there against ~90 ns in C, where four 16-float vector accumulators (GCC/Clang vector
 * extensions) stay in registers across the inputs. The weights come transposed ([input][output]), so
 * every mat-vec is a run of broadcast-multiply-adds over contiguous outputs.
 *
 * Per sample and utterance: the embedding lookup; per layer one fused (2R, 2R) mat-vec over
 * [h(t - d); h(t)] plus the interpolated frame-rate conditioning, the gated unit, one (R + S, R) mat-vec
 * for residual and skip; then the two output layers and inverse-CDF sampling in double precision.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* tanh for float with absolute error < 1e-6 (Eigen's 13/6 rational approximation), as the numba kernel. */
static inline float fast_tanh(float x) {
    const float lim = 7.90531110763549805f;
    x = x < -lim ? -lim : (x > lim ? lim : x);
    float x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * x;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return p / q;
}

typedef float v16 __attribute__((vector_size(64), aligned(4)));  /* unaligned loads and stores */

/* out[0:m] += x[0:k] @ wt, with wt (k, m) row-major ([input][output]). Outputs go 64 at a time in four
 * vector accumulators, then 16 at a time, then one by one. */
static inline void matvec_add(float *restrict out, const float *restrict wt, const float *restrict x,
                              int64_t k, int64_t m) {
    int64_t o0 = 0;
    for (; o0 + 64 <= m; o0 += 64) {
        v16 a0 = *(const v16 *)(out + o0), a1 = *(const v16 *)(out + o0 + 16);
        v16 a2 = *(const v16 *)(out + o0 + 32), a3 = *(const v16 *)(out + o0 + 48);
        for (int64_t i = 0; i < k; i++) {
            const float *row = wt + i * m + o0;
            const float xi = x[i];
            a0 += *(const v16 *)row * xi;
            a1 += *(const v16 *)(row + 16) * xi;
            a2 += *(const v16 *)(row + 32) * xi;
            a3 += *(const v16 *)(row + 48) * xi;
        }
        *(v16 *)(out + o0) = a0;
        *(v16 *)(out + o0 + 16) = a1;
        *(v16 *)(out + o0 + 32) = a2;
        *(v16 *)(out + o0 + 48) = a3;
    }
    for (; o0 + 16 <= m; o0 += 16) {
        v16 acc = *(const v16 *)(out + o0);
        for (int64_t i = 0; i < k; i++) acc += *(const v16 *)(wt + i * m + o0) * x[i];
        *(v16 *)(out + o0) = acc;
    }
    for (; o0 < m; o0++)
        for (int64_t i = 0; i < k; i++) out[o0] += wt[i * m + o0] * x[i];
}

#define R GLOTTIS_R
#define S GLOTTIS_S
#define K GLOTTIS_K

/* Returns 0, or -1 when the sizes differ from the ones compiled in. */
int glottis_wavenet_loop(
    int64_t n_layers, int64_t r, int64_t s, int64_t k, int64_t batch,
    const float *restrict embed,    /* (K, R) */
    const float *restrict gate_wt,  /* (L, 2R, 2R): [layer][input][output], inputs [h(t - d); h(t)] */
    const float *restrict gate_b,   /* (L, 2R) */
    const float *restrict rs_wt,    /* (L, R, R + S) */
    const float *restrict rs_b,     /* (L, R + S) */
    const float *restrict out1_wt,  /* (S, S) */
    const float *restrict out1_b,   /* (S,) */
    const float *restrict out2_wt,  /* (S, K) */
    const float *restrict out2_b,   /* (K,) */
    const int64_t *restrict dilations,  /* (L,) */
    const int64_t *restrict offsets,    /* (L + 1,): layer l's queue is rows offsets[l]:offsets[l + 1] */
    const float *restrict cond,     /* (B, cond_frames, L, 2R) frame-rate gate biases */
    int64_t cond_frames, int64_t hop,
    int64_t t0, int64_t n,          /* steps t0 .. t0 + n - 1 of the utterance */
    const int64_t *restrict teacher,  /* (n_teacher, B) inputs for the first steps, then the samples */
    int64_t n_teacher,
    const double *restrict uniforms,  /* (n, B) */
    float inv_temperature,
    float *restrict queue,          /* in/out (offsets[L], B, R): the past activations (zeros at t0 = 0) */
    int64_t *restrict prev,         /* in/out (B,): the last sample (the silence class at t0 = 0) */
    int64_t *restrict classes,      /* out: (n, B) */
    float *restrict logits_out)     /* out: (n, B, K), or NULL not to keep them */
{
    if (r != R || s != S || k != K) return -1;
    r = R, s = S, k = K;  /* constants from here on: loops of known length */
    const int64_t r2 = 2 * R, rs_n = R + S;
    float h[batch][R], skips[batch][S];
    float a[2 * R], z[R], rs[R + S], y[S], logits[K];
    double probs[K];
    const float sqrt_half = 0.7071067811865476f;

    for (int64_t i = 0; i < n; i++) {
        const int64_t t = t0 + i;
        const int64_t frame = t / hop;
        const float frac = (float)(t - frame * hop) / (float)hop, rest = 1.0f - frac;
        for (int64_t b = 0; b < batch; b++) {
            const int64_t x = i < n_teacher ? teacher[i * batch + b] : prev[b];
            memcpy(h[b], embed + x * r, (size_t)r * sizeof(float));
            memset(skips[b], 0, (size_t)s * sizeof(float));
        }
        for (int64_t layer = 0; layer < n_layers; layer++) {
            const int64_t slot = offsets[layer] + t % dilations[layer];
            const float *restrict w = gate_wt + layer * r2 * r2;
            const float *restrict v = rs_wt + layer * r * rs_n;
            const float *restrict bias = gate_b + layer * r2;
            for (int64_t b = 0; b < batch; b++) {
                float *restrict past = queue + (slot * batch + b) * r;
                const float *restrict c0 = cond + ((b * cond_frames + frame) * n_layers + layer) * r2;
                const float *restrict c1 = c0 + n_layers * r2;
                for (int64_t o = 0; o < r2; o++) a[o] = bias[o] + c0[o] * rest + c1[o] * frac;
                matvec_add(a, w, past, r, r2);
                matvec_add(a, w + r * r2, h[b], r, r2);
                memcpy(past, h[b], (size_t)r * sizeof(float));
                /* sigmoid(x) = (1 + tanh(x / 2)) / 2 */
                for (int64_t o = 0; o < r; o++) z[o] = fast_tanh(a[o]) * (0.5f + 0.5f * fast_tanh(0.5f * a[r + o]));
                memcpy(rs, rs_b + layer * rs_n, (size_t)rs_n * sizeof(float));
                matvec_add(rs, v, z, r, rs_n);
                for (int64_t i = 0; i < r; i++) h[b][i] = (h[b][i] + rs[i]) * sqrt_half;
                for (int64_t i = 0; i < s; i++) skips[b][i] += rs[r + i];
            }
        }
        for (int64_t b = 0; b < batch; b++) {
            for (int64_t i = 0; i < s; i++) skips[b][i] = skips[b][i] > 0.0f ? skips[b][i] : 0.0f;
            memcpy(y, out1_b, (size_t)s * sizeof(float));
            matvec_add(y, out1_wt, skips[b], s, s);
            for (int64_t o = 0; o < s; o++) y[o] = y[o] > 0.0f ? y[o] : 0.0f;
            memcpy(logits, out2_b, (size_t)k * sizeof(float));
            matvec_add(logits, out2_wt, y, s, k);
            if (logits_out) memcpy(logits_out + (i * batch + b) * k, logits, (size_t)k * sizeof(float));
            float top = -FLT_MAX;
            for (int64_t o = 0; o < k; o++) top = logits[o] > top ? logits[o] : top;
            for (int64_t o = 0; o < k; o++) probs[o] = exp((double)((logits[o] - top) * inv_temperature));
            double total = 0.0;
            for (int64_t o = 0; o < k; o++) {
                total += probs[o];
                probs[o] = total;
            }
            const double threshold = uniforms[i * batch + b] * total;
            int64_t chosen = 0;
            for (int64_t o = 0; o < k; o++) chosen += probs[o] < threshold;
            chosen = chosen < k - 1 ? chosen : k - 1;
            classes[i * batch + b] = chosen;
            prev[b] = chosen;
        }
    }
    return 0;
}

/* The ROI JPEG decoder: decode only the rows and MCU columns that a crop keeps, then a bilinear
 * resize of the (sub-pixel) box to size x size and an optional horizontal flip, written into a
 * caller's buffer. Python side: pipeline/data/jpeg.py (which picks this path or Pillow's).
 *
 * libjpeg-turbo's partial-decode API does the saving (libjpeg-turbo >= 1.5; Debian's libjpeg-dev):
 *   jpeg_crop_scanline   decode only the iMCU columns that hold the box (plus one pixel each side,
 *                        so fancy upsampling sees real neighbours, as in a full decode);
 *   jpeg_skip_scanlines  skip the rows above the box (Huffman decoding only, no IDCT);
 *                        the rows below it are never read (jpeg_abort_decompress);
 *   scale_denom          DCT scaling by 1/2, 1/4, 1/8, chosen by the caller with the same rule as
 *                        Pillow's draft() in pipeline/data/transforms.py.
 * A file with a restart marker after every MCU (what preprocess writes) goes further: only the
 * MCUs of the box's rows and columns are handed to libjpeg, as a JPEG of their own, so not even
 * the Huffman decoding of the rest is done ("restart windows" below).
 * The resize is Pillow's: the same filter (triangle, support scaled by the downscale factor), the
 * same coefficients and bounds (Resample.c precompute_coeffs), horizontal pass first into an
 * 8-bit image, then the vertical pass. It differs only in arithmetic (pillow-simd's 16-bit
 * weights here, 22-bit in Pillow), so a pixel differs by at most a level or two. A box of whole
 * pixels at scale 1 is copied, not resized.
 *
 * The GIL is released from the first libjpeg call to the last write.
 *
 * decode_train_batch does a whole train batch in one call: each file read here (or given as
 * bytes), its box and flip drawn from the sample's seed as pipeline/data/transforms.py draws them
 * (the "train draws" section), decoded into its slot; what it cannot take goes back to Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>

#if !defined(LIBJPEG_TURBO_VERSION) && !defined(JCS_EXTENSIONS)
#error "the ROI decoder needs libjpeg-turbo (jpeg_crop_scanline, jpeg_skip_scanlines, JCS_EXT_RGBX)"
#endif

/* ---------------------------------------------------------------- errors */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
    int warnings;
} ErrorManager;

static void error_exit(j_common_ptr cinfo) {
    ErrorManager *errors = (ErrorManager *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, errors->message);
    longjmp(errors->jump, 1);
}

static void emit_message(j_common_ptr cinfo, int level) {
    /* level -1 is a warning (corrupt data, premature end): remember the first one; the caller
     * turns it into an error so that Pillow, not a grey fill, decides what a damaged file gives */
    ErrorManager *errors = (ErrorManager *)cinfo->err;
    if (level < 0) {
        if (errors->warnings == 0) {
            (*cinfo->err->format_message)(cinfo, errors->message);
        }
        errors->warnings++;
    }
}

static void setup_errors(struct jpeg_decompress_struct *cinfo, ErrorManager *errors) {
    cinfo->err = jpeg_std_error(&errors->pub);
    errors->pub.error_exit = error_exit;
    errors->pub.emit_message = emit_message;
    errors->message[0] = '\0';
    errors->warnings = 0;
}

static PyObject *JpegError;

/* ---------------------------------------------------------------- probe */

static const char *color_space_name(J_COLOR_SPACE space) {
    switch (space) {
    case JCS_GRAYSCALE: return "gray";
    case JCS_RGB: return "rgb";
    case JCS_YCbCr: return "ycbcr";
    case JCS_CMYK: return "cmyk";
    case JCS_YCCK: return "ycck";
    default: return "unknown";
    }
}

static PyObject *probe(PyObject *self, PyObject *args) {
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) {
        return NULL;
    }
    struct jpeg_decompress_struct cinfo;
    ErrorManager errors;
    setup_errors(&cinfo, &errors);
    jpeg_create_decompress(&cinfo);
    if (setjmp(errors.jump)) {
        jpeg_destroy_decompress(&cinfo);
        PyBuffer_Release(&data);
        PyErr_Format(JpegError, "not a readable JPEG header: %s", errors.message);
        return NULL;
    }
    jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
    jpeg_read_header(&cinfo, TRUE);
    PyObject *sampling = PyTuple_New(cinfo.num_components);
    for (int index = 0; sampling && index < cinfo.num_components; index++) {
        PyTuple_SET_ITEM(sampling, index,
                         Py_BuildValue("(ii)", cinfo.comp_info[index].h_samp_factor,
                                       cinfo.comp_info[index].v_samp_factor));
    }
    PyObject *result = sampling == NULL
                           ? NULL
                           : Py_BuildValue("(iiiOsN)", (int)cinfo.image_width,
                                           (int)cinfo.image_height, cinfo.num_components,
                                           cinfo.progressive_mode ? Py_True : Py_False,
                                           color_space_name(cinfo.jpeg_color_space), sampling);
    jpeg_destroy_decompress(&cinfo);
    PyBuffer_Release(&data);
    return result;
}

/* ---------------------------------------------------------------- resize coefficients */

/* Pillow's bilinear filter (Resample.c): a triangle of support 1 */
static double triangle(double x) {
    x = fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

typedef struct {
    int taps;      /* coefficients stored per output pixel (Pillow's ksize) */
    int widest;    /* the most taps any output pixel uses (<= taps) */
    int *first;    /* [out] first input index of each output pixel's window */
    int *count;    /* [out] taps used by each output pixel */
    float *weights; /* [out * taps] */
    short *fixed;   /* [out * taps] the weights in fixed point, `precision` fraction bits */
    int precision;
} Coefficients;

static void free_coefficients(Coefficients *coefficients) {
    free(coefficients->first);
    free(coefficients->count);
    free(coefficients->weights);
    free(coefficients->fixed);
}

/* Resample.c precompute_coeffs, line for line (then trimmed of zero weights): the window of
 * output pixel i over the input span [in0, in1) of an axis of `in_size` pixels. Returns 0 when
 * out of memory. */
static int compute_coefficients(int in_size, double in0, double in1, int out_size,
                                Coefficients *coefficients) {
    double scale = (in1 - in0) / out_size;
    double filter_scale = scale < 1.0 ? 1.0 : scale;
    double support = 1.0 * filter_scale;
    int taps = (int)ceil(support) * 2 + 1;
    coefficients->taps = taps;
    coefficients->widest = 0;
    coefficients->first = malloc(sizeof(int) * out_size);
    coefficients->count = malloc(sizeof(int) * out_size);
    coefficients->weights = calloc((size_t)out_size * taps, sizeof(float));
    if (!coefficients->first || !coefficients->count || !coefficients->weights) {
        return 0;
    }
    double kernel[taps];
    for (int index = 0; index < out_size; index++) {
        double center = in0 + (index + 0.5) * scale;
        double inverse = 1.0 / filter_scale;
        int low = (int)(center - support + 0.5);
        if (low < 0) {
            low = 0;
        }
        int high = (int)(center + support + 0.5);
        if (high > in_size) {
            high = in_size;
        }
        int count = high - low;
        if (count > taps) {
            count = taps;
        }
        double total = 0.0;
        for (int tap = 0; tap < count; tap++) {
            kernel[tap] = triangle((tap + low - center + 0.5) * inverse);
            total += kernel[tap];
        }
        /* zero weights at either end add nothing: drop them, so that a box at scale 1 on whole
         * pixels (the val crop of a 256 px image) is a one-tap copy, not a two-tap sum */
        int skip = 0;
        while (count > 1 && kernel[skip] == 0.0) {
            skip++;
            count--;
        }
        while (count > 1 && kernel[skip + count - 1] == 0.0) {
            count--;
        }
        for (int tap = 0; tap < count; tap++) {
            coefficients->weights[(size_t)index * taps + tap] =
                (float)(total != 0.0 ? kernel[skip + tap] / total : kernel[skip + tap]);
        }
        coefficients->first[index] = low + skip;
        coefficients->count[index] = count;
        if (count > coefficients->widest) {
            coefficients->widest = count;
        }
    }
    /* fixed point as pillow-simd's normalize_coeffs_8bpc: the most fraction bits (<= 15) that
     * keep the largest weight in int16 */
    float largest = 0.0f;
    for (size_t index = 0; index < (size_t)out_size * taps; index++) {
        largest = coefficients->weights[index] > largest ? coefficients->weights[index] : largest;
    }
    int precision = 15;
    while (precision > 1 && largest * (float)(1 << precision) + 0.5f >= 32768.0f) {
        precision--;
    }
    coefficients->precision = precision;
    coefficients->fixed = calloc((size_t)out_size * taps, sizeof(short));
    if (!coefficients->fixed) {
        return 0;
    }
    for (size_t index = 0; index < (size_t)out_size * taps; index++) {
        coefficients->fixed[index] =
            (short)(coefficients->weights[index] * (float)(1 << precision) + 0.5f);
    }
    return 1;
}

/* ---------------------------------------------------------------- passes */

/* Both passes work on RGBX pixels (libjpeg-turbo's JCS_EXT_RGBX output) in integer arithmetic,
 * like pillow-simd's ImagingResample*Convolution8u: 16-bit fixed-point weights (`precision`
 * fraction bits, the most that fit int16), int32 sums, Pillow's rounding (+half, shift, clip to
 * 0..255). Integer sums do not depend on the order of the additions, so the AVX2 loops (the
 * Makefile's CC is "cc -mavx2" where the CPU has it) and the plain-C ones give the very same
 * bytes; tests/data/test_jpeg.py builds the plain variant (-DJPEG_ROI_PLAIN) and compares. */

#if defined(__AVX2__) && !defined(JPEG_ROI_PLAIN)
#define ROI_AVX2 1
#include <immintrin.h>
#else
#define ROI_AVX2 0
#endif

static inline unsigned char round_shift_clip(int sum, int precision) {
    sum = (sum + (1 << (precision - 1))) >> precision;
    return sum > 255 ? 255 : (unsigned char)sum;
}

/* the horizontal pass's weights, laid out for its loop: with AVX2, for output pixels 2k and
 * 2k+1 and each group of 4 taps, two vectors of 16 int16: taps (0, 1) then (2, 3) of the group,
 * pixel 2k's pair repeated 4 times in the low 128-bit lane and pixel 2k+1's in the high lane
 * (the order in which _mm256_madd_epi16 meets the shuffled pixels); in plain C, `fixed` itself */
static short *build_pair_weights(const Coefficients *horizontal, int size, int groups) {
#if ROI_AVX2
    const int taps = horizontal->taps;
    short *pairs = calloc((size_t)(size / 2 + 1) * groups * 32, sizeof(short));
    if (pairs == NULL) {
        return NULL;
    }
    for (int index = 0; index + 1 < size; index += 2) {
        for (int tap = 0; tap < horizontal->widest; tap++) {
            const int group = tap / 4, half = (tap % 4) / 2, parity = tap % 2;
            short *lanes = pairs + (((size_t)(index / 2) * groups + group) * 2 + half) * 16;
            for (int repeat = 0; repeat < 4; repeat++) {
                lanes[2 * repeat + parity] = horizontal->fixed[(size_t)index * taps + tap];
                lanes[8 + 2 * repeat + parity] = horizontal->fixed[(size_t)(index + 1) * taps + tap];
            }
        }
    }
    return pairs;
#else
    (void)horizontal;
    (void)size;
    (void)groups;
    return malloc(1); /* unused without AVX2 */
#endif
}

/* one output pixel of the horizontal pass, in plain C (the odd size's last pixel with AVX2) */
static inline void resample_pixel(const unsigned char *source, const short *weights, int widest,
                                  int precision, unsigned char *target) {
    int sum[4] = {0, 0, 0, 0};
    for (int tap = 0; tap < widest; tap++) {
        for (int channel = 0; channel < 4; channel++) {
            sum[channel] += source[4 * tap + channel] * weights[tap];
        }
    }
    for (int channel = 0; channel < 4; channel++) {
        target[channel] = round_shift_clip(sum[channel], precision);
    }
}

#if ROI_AVX2
/* output pixels `index` and `index` + 1 of one row: int32 sums per channel (pixel `index` in the
 * low 128-bit lane), `half` added, not yet shifted. `two_taps`: every pixel's taps past the
 * first 2 weigh 0 (widest <= 2), so only taps 0 and 1 of the first group are summed. */
static inline __attribute__((always_inline)) __m256i
pair_sum(const unsigned char *line, const Coefficients *horizontal, const short *pair_weights,
         int groups, int two_taps, int index, int row_offset, __m256i half) {
    const __m256i low_taps = _mm256_setr_epi8(0, -1, 4, -1, 1, -1, 5, -1, 2, -1, 6, -1, 3, -1, 7,
                                              -1, 0, -1, 4, -1, 1, -1, 5, -1, 2, -1, 6, -1, 3, -1,
                                              7, -1);
    const __m256i high_taps = _mm256_setr_epi8(8, -1, 12, -1, 9, -1, 13, -1, 10, -1, 14, -1, 11,
                                               -1, 15, -1, 8, -1, 12, -1, 9, -1, 13, -1, 10, -1,
                                               14, -1, 11, -1, 15, -1);
    const int first = 4 * (horizontal->first[index] - row_offset);
    const int second = 4 * (horizontal->first[index + 1] - row_offset);
    const __m256i *weights = (const __m256i *)(pair_weights + (size_t)(index / 2) * groups * 32);
    __m256i sum = half;
    for (int group = 0; group < groups; group++) {
        __m256i pixels = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(line + first + 16 * group))),
            _mm_loadu_si128((const __m128i *)(line + second + 16 * group)), 1);
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_shuffle_epi8(pixels, low_taps),
                                                      _mm256_loadu_si256(weights + 2 * group)));
        if (!two_taps) {
            sum = _mm256_add_epi32(
                sum, _mm256_madd_epi16(_mm256_shuffle_epi8(pixels, high_taps),
                                       _mm256_loadu_si256(weights + 2 * group + 1)));
        }
    }
    return sum;
}

/* pixels 0 .. 8 * octets - 1 of each of `rows` rows, 8 a step: 4 pair sums packed to 32 bytes.
 * packs/packus work within 128-bit lanes, leaving pixels (0, 2, 4, 6 | 1, 3, 5, 7): one
 * permute puts them in order. Inlined with constant `groups` and `two_taps` per caller. */
static inline __attribute__((always_inline)) void
resample_row_octets(const unsigned char *row, size_t row_stride, int rows, int row_offset,
                    const Coefficients *horizontal, const short *pair_weights, int groups,
                    int two_taps, int precision, int octets, unsigned char *target,
                    size_t target_stride) {
    const __m256i half = _mm256_set1_epi32(1 << (precision - 1));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m128i shift = _mm_cvtsi32_si128(precision);
    for (int r = 0; r < rows; r++) {
        const unsigned char *line = row + r * row_stride;
        unsigned char *out = target + r * target_stride;
        for (int octet = 0; octet < octets; octet++) {
            const int index = 8 * octet;
            __m256i s0 = pair_sum(line, horizontal, pair_weights, groups, two_taps, index,
                                  row_offset, half);
            __m256i s1 = pair_sum(line, horizontal, pair_weights, groups, two_taps, index + 2,
                                  row_offset, half);
            __m256i s2 = pair_sum(line, horizontal, pair_weights, groups, two_taps, index + 4,
                                  row_offset, half);
            __m256i s3 = pair_sum(line, horizontal, pair_weights, groups, two_taps, index + 6,
                                  row_offset, half);
            __m256i words01 = _mm256_packs_epi32(_mm256_sra_epi32(s0, shift),
                                                 _mm256_sra_epi32(s1, shift));
            __m256i words23 = _mm256_packs_epi32(_mm256_sra_epi32(s2, shift),
                                                 _mm256_sra_epi32(s3, shift));
            __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words01, words23),
                                                        order);
            _mm256_storeu_si256((__m256i *)(out + 4 * index), bytes);
        }
    }
}
#endif

/* `rows` decoded RGBX rows, `row_stride` bytes apart (starting at column `row_offset` of the
 * scaled image) → `rows` rows of `size` RGBX pixels of the intermediate image, `size * 4` bytes
 * apart. Every pixel runs the same taps (`widest`, rounded up to a group of 4 with AVX2, or just
 * 2 where no pixel has more): zero weights past its count, zero pixels past the row's end. */
static void resample_rows(const unsigned char *row, size_t row_stride, int rows, int row_offset,
                          const Coefficients *horizontal, const short *pair_weights, int groups,
                          int size, unsigned char *target) {
    const int taps = horizontal->taps, widest = horizontal->widest;
    const int precision = horizontal->precision;
    const size_t target_stride = (size_t)4 * size;
    if (widest == 1) { /* one tap of weight 1: a copy of each pixel */
        for (int r = 0; r < rows; r++) {
            for (int index = 0; index < size; index++) {
                memcpy(target + r * target_stride + 4 * index,
                       row + r * row_stride + 4 * (horizontal->first[index] - row_offset), 4);
            }
        }
        return;
    }
    int index = 0;
#if ROI_AVX2
    /* 8 output pixels (4 pairs) a step, a row at a time: the pack and the 32-byte store are
     * shared by the 4 pairs; then the pairs left over, one at a time */
    const int octets = size / 8;
    if (widest <= 2) { /* an upscale: taps 2 and 3 of every pixel weigh 0, skip their half */
        resample_row_octets(row, row_stride, rows, row_offset, horizontal, pair_weights, 1, 1,
                            precision, octets, target, target_stride);
    } else if (groups == 1) {
        resample_row_octets(row, row_stride, rows, row_offset, horizontal, pair_weights, 1, 0,
                            precision, octets, target, target_stride);
    } else {
        resample_row_octets(row, row_stride, rows, row_offset, horizontal, pair_weights, groups,
                            0, precision, octets, target, target_stride);
    }
    const __m256i half = _mm256_set1_epi32(1 << (precision - 1));
    for (index = 8 * octets; index + 2 <= size; index += 2) {
        for (int r = 0; r < rows; r++) {
            __m256i sum = pair_sum(row + r * row_stride, horizontal, pair_weights, groups, 0,
                                   index, row_offset, half);
            sum = _mm256_srai_epi32(sum, precision);
            __m256i words = _mm256_packs_epi32(sum, sum);
            __m256i bytes = _mm256_packus_epi16(words, words);
            unsigned char *out = target + r * target_stride + 4 * index;
            int low = _mm256_cvtsi256_si32(bytes);
            int high = _mm_cvtsi128_si32(_mm256_extracti128_si256(bytes, 1));
            memcpy(out, &low, 4);
            memcpy(out + 4, &high, 4);
        }
    }
#else
    (void)pair_weights;
    (void)groups;
#endif
    for (; index < size; index++) {
        const short *weights = horizontal->fixed + (size_t)index * taps;
        const int first = 4 * (horizontal->first[index] - row_offset);
        for (int r = 0; r < rows; r++) {
            resample_pixel(row + r * row_stride + first, weights, widest, precision,
                           target + r * target_stride + 4 * index);
        }
    }
}

/* one output row (4 * size bytes): the weighted sum of `count` intermediate rows. With AVX2, 32
 * bytes a step: rows tap and tap + 1 interleaved byte by byte, widened to int16 pairs, one madd
 * by the pair of weights (set up once a row); every op stays within its 128-bit lane, so the
 * packs give the bytes back in order. Then 16 bytes a step, then byte by byte. */
static void resample_column_row(const unsigned char *source, size_t stride, const short *weights,
                                int count, int precision, int size, unsigned char *target) {
    const int width = 4 * size;
    int x = 0;
#if ROI_AVX2
    const int pairs = (count + 1) / 2;
    __m256i pair_weights[pairs];
    for (int pair = 0; pair < pairs; pair++) {
        const int tap = 2 * pair, second = tap + 1 < count ? weights[tap + 1] : 0;
        const unsigned packed =
            (unsigned)(unsigned short)weights[tap] | ((unsigned)(unsigned short)second << 16);
        pair_weights[pair] = _mm256_set1_epi32((int)packed);
    }
    const __m256i half = _mm256_set1_epi32(1 << (precision - 1)), zero = _mm256_setzero_si256();
    const __m128i shift = _mm_cvtsi32_si128(precision);
    for (; x + 32 <= width; x += 32) {
        __m256i s0 = half, s1 = half, s2 = half, s3 = half;
        for (int pair = 0; pair < pairs; pair++) {
            const int tap = 2 * pair;
            const __m256i a = _mm256_loadu_si256((const __m256i *)(source + tap * stride + x));
            const __m256i b =
                tap + 1 < count
                    ? _mm256_loadu_si256((const __m256i *)(source + (tap + 1) * stride + x))
                    : zero;
            const __m256i low = _mm256_unpacklo_epi8(a, b), high = _mm256_unpackhi_epi8(a, b);
            s0 = _mm256_add_epi32(
                s0, _mm256_madd_epi16(_mm256_unpacklo_epi8(low, zero), pair_weights[pair]));
            s1 = _mm256_add_epi32(
                s1, _mm256_madd_epi16(_mm256_unpackhi_epi8(low, zero), pair_weights[pair]));
            s2 = _mm256_add_epi32(
                s2, _mm256_madd_epi16(_mm256_unpacklo_epi8(high, zero), pair_weights[pair]));
            s3 = _mm256_add_epi32(
                s3, _mm256_madd_epi16(_mm256_unpackhi_epi8(high, zero), pair_weights[pair]));
        }
        const __m256i words01 =
            _mm256_packs_epi32(_mm256_sra_epi32(s0, shift), _mm256_sra_epi32(s1, shift));
        const __m256i words23 =
            _mm256_packs_epi32(_mm256_sra_epi32(s2, shift), _mm256_sra_epi32(s3, shift));
        _mm256_storeu_si256((__m256i *)(target + x), _mm256_packus_epi16(words01, words23));
    }
    for (; x + 16 <= width; x += 16) {
        __m256i low = half, high = half;
        for (int pair = 0; pair < pairs; pair++) {
            const int tap = 2 * pair;
            __m128i a = _mm_loadu_si128((const __m128i *)(source + tap * stride + x));
            __m128i b = tap + 1 < count
                            ? _mm_loadu_si128((const __m128i *)(source + (tap + 1) * stride + x))
                            : _mm_setzero_si128();
            low = _mm256_add_epi32(
                low, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b)),
                                       pair_weights[pair]));
            high = _mm256_add_epi32(
                high, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a, b)),
                                        pair_weights[pair]));
        }
        low = _mm256_sra_epi32(low, shift);
        high = _mm256_sra_epi32(high, shift);
        /* packs works within 128-bit lanes: qwords (x0-3, x8-11, x4-7, x12-15) → in order */
        __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(low, high), 0xD8);
        _mm_storeu_si128((__m128i *)(target + x),
                         _mm_packus_epi16(_mm256_castsi256_si128(words),
                                          _mm256_extracti128_si256(words, 1)));
    }
#endif
    for (; x < width; x++) {
        int sum = 0;
        for (int tap = 0; tap < count; tap++) {
            sum += source[tap * stride + x] * weights[tap];
        }
        target[x] = round_shift_clip(sum, precision);
    }
}

/* RGBX → RGB, mirrored when `flip` */
#if ROI_AVX2
/* 4 pixels a shuffle, written in increasing address order so that each 16-byte store's 4 spare
 * bytes are overwritten by the next; a store that would pass the row's end goes through a copy */
static void write_rgb_row(const unsigned char *line, int size, int flip, unsigned char *target) {
    const __m128i keep = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    const __m128i mirror = _mm_setr_epi8(12, 13, 14, 8, 9, 10, 4, 5, 6, 0, 1, 2, -1, -1, -1, -1);
    const int groups = size / 4, end = 3 * size;
    for (int step = 0; step < groups; step++) {
        const int group = flip ? groups - 1 - step : step;
        const int position = flip ? 3 * (size - 4 - 4 * group) : 12 * group;
        __m128i pixels = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(line + 16 * group)),
                                          flip ? mirror : keep);
        if (position + 16 <= end && !(flip && step == groups - 1 && size % 4)) {
            _mm_storeu_si128((__m128i *)(target + position), pixels);
        } else {
            unsigned char spare[16];
            _mm_storeu_si128((__m128i *)spare, pixels);
            memcpy(target + position, spare, 12);
        }
    }
    /* pixels past the last whole group, after the groups: a 16-byte store's spare bytes may
     * reach them (size % 4 of 2 or 3, not flipped) */
    for (int x = 4 * groups; x < size; x++) {
        memcpy(target + 3 * (flip ? size - 1 - x : x), line + 4 * x, 3);
    }
}
#else
static void write_rgb_row(const unsigned char *line, int size, int flip, unsigned char *target) {
    for (int x = 0; x < size; x++) {
        memcpy(target + 3 * (flip ? size - 1 - x : x), line + 4 * x, 3);
    }
}
#endif

/* the intermediate image's rows → out [size, size, 3], mirrored when `flip`; `line` holds one
 * RGBX output row. An output row of one tap (weight 1) is an intermediate row: no sum. */
static void resample_columns(const unsigned char *intermediate, int first_row,
                             const Coefficients *vertical, int size, int flip,
                             unsigned char *line, unsigned char *out) {
    const size_t stride = (size_t)4 * size;
    for (int y = 0; y < size; y++) {
        const unsigned char *source =
            intermediate + (size_t)(vertical->first[y] - first_row) * stride;
        if (vertical->count[y] == 1) {
            write_rgb_row(source, size, flip, out + (size_t)y * size * 3);
            continue;
        }
        resample_column_row(source, stride, vertical->fixed + (size_t)y * vertical->taps,
                            vertical->count[y], vertical->precision, size, line);
        write_rgb_row(line, size, flip, out + (size_t)y * size * 3);
    }
}
/* ---------------------------------------------------------------- train draws */

/* A train sample's crop box and flip, drawn here as pipeline/data/transforms.py draws them in
 * Python: `random.Random(seed)` (CPython's Mersenne Twister, seeded by init_by_array with the
 * seed's 32-bit words, low word first), then `sample_crop_box` (torchvision's
 * RandomResizedCrop.get_params) and `random() < flip_prob`, draw for draw and in the same double
 * arithmetic (the Makefile compiles without -ffast-math and with -ffp-contract=off, so no
 * expression is fused or reordered; exp and log are the libm's that CPython calls). Python's
 * functions stay the reference: tests/data/test_jpeg.py compares both over thousands of seeds,
 * image sizes and ranges. This copy exists so that a batch is read, drawn and decoded with the
 * GIL released (decode_train_batch). */

enum { MT_N = 624, MT_M = 397 };

typedef struct {
    uint32_t state[MT_N];
    int index;
} Twister;

static void twister_seed_word(Twister *twister, uint32_t seed) {
    uint32_t *mt = twister->state;
    mt[0] = seed;
    for (int index = 1; index < MT_N; index++) {
        mt[index] = 1812433253U * (mt[index - 1] ^ (mt[index - 1] >> 30)) + (uint32_t)index;
    }
    twister->index = MT_N;
}

/* CPython's random_seed for a non-negative int: init_by_array over its 32-bit words */
static void twister_seed(Twister *twister, uint64_t seed) {
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const int length = seed >> 32 ? 2 : 1;
    uint32_t *mt = twister->state;
    twister_seed_word(twister, 19650218U);
    int row = 1, word = 0;
    for (int count = MT_N > length ? MT_N : length; count; count--) {
        mt[row] = (mt[row] ^ ((mt[row - 1] ^ (mt[row - 1] >> 30)) * 1664525U)) + key[word] +
                  (uint32_t)word;
        row++;
        word++;
        if (row >= MT_N) {
            mt[0] = mt[MT_N - 1];
            row = 1;
        }
        if (word >= length) {
            word = 0;
        }
    }
    for (int count = MT_N - 1; count; count--) {
        mt[row] = (mt[row] ^ ((mt[row - 1] ^ (mt[row - 1] >> 30)) * 1566083941U)) - (uint32_t)row;
        row++;
        if (row >= MT_N) {
            mt[0] = mt[MT_N - 1];
            row = 1;
        }
    }
    mt[0] = 0x80000000U;
}

static uint32_t twister_next(Twister *twister) {
    uint32_t *mt = twister->state;
    if (twister->index >= MT_N) {
        static const uint32_t twist[2] = {0x0U, 0x9908b0dfU};
        int index;
        uint32_t bits;
        for (index = 0; index < MT_N - MT_M; index++) {
            bits = (mt[index] & 0x80000000U) | (mt[index + 1] & 0x7fffffffU);
            mt[index] = mt[index + MT_M] ^ (bits >> 1) ^ twist[bits & 1U];
        }
        for (; index < MT_N - 1; index++) {
            bits = (mt[index] & 0x80000000U) | (mt[index + 1] & 0x7fffffffU);
            mt[index] = mt[index + (MT_M - MT_N)] ^ (bits >> 1) ^ twist[bits & 1U];
        }
        bits = (mt[MT_N - 1] & 0x80000000U) | (mt[0] & 0x7fffffffU);
        mt[MT_N - 1] = mt[MT_M - 1] ^ (bits >> 1) ^ twist[bits & 1U];
        twister->index = 0;
    }
    uint32_t value = mt[twister->index++];
    value ^= value >> 11;
    value ^= (value << 7) & 0x9d2c5680U;
    value ^= (value << 15) & 0xefc60000U;
    value ^= value >> 18;
    return value;
}

/* random.random(): 53 bits */
static double twister_random(Twister *twister) {
    const uint32_t high = twister_next(twister) >> 5, low = twister_next(twister) >> 6;
    return (high * 67108864.0 + low) * (1.0 / 9007199254740992.0);
}

/* random.uniform(low, high) */
static double twister_uniform(Twister *twister, double low, double high) {
    return low + (high - low) * twister_random(twister);
}

/* random.randint(0, high) for 0 <= high < 2**31: _randbelow_with_getrandbits(high + 1) */
static int twister_below_or_equal(Twister *twister, int high) {
    const uint32_t count = (uint32_t)high + 1;
    int bits = 0;
    while (bits < 32 && (count >> bits) != 0) {
        bits++; /* count.bit_length() */
    }
    uint32_t value;
    do {
        value = twister_next(twister) >> (32 - bits); /* getrandbits(bits), bits <= 32 */
    } while (value >= count);
    return (int)value;
}

/* Python's round() of a float to an int: halves to even (nearbyint in the default mode) */
static long round_half_even(double value) {
    return (long)nearbyint(value);
}

typedef struct {
    double scale[2], ratio[2]; /* as given: ratio[0] may exceed ratio[1], as in Python */
    double flip_prob;
} DrawRanges;

/* transforms.sample_crop_box, then the flip: (top, left, height, width, flip) */
static void draw_train_box(uint64_t seed, int width, int height, const DrawRanges *ranges,
                           int box[4], int *flip) {
    Twister twister;
    twister_seed(&twister, seed);
    const double area = (double)((long)height * width);
    const double log_low = log(ranges->ratio[0]), log_high = log(ranges->ratio[1]);
    int found = 0;
    for (int attempt = 0; attempt < 10 && !found; attempt++) {
        const double target_area =
            area * twister_uniform(&twister, ranges->scale[0], ranges->scale[1]);
        const double aspect_ratio = exp(twister_uniform(&twister, log_low, log_high));
        const long crop_width = round_half_even(sqrt(target_area * aspect_ratio));
        const long crop_height = round_half_even(sqrt(target_area / aspect_ratio));
        if (0 < crop_width && crop_width <= width && 0 < crop_height && crop_height <= height) {
            box[0] = twister_below_or_equal(&twister, height - (int)crop_height);
            box[1] = twister_below_or_equal(&twister, width - (int)crop_width);
            box[2] = (int)crop_height;
            box[3] = (int)crop_width;
            found = 1;
        }
    }
    if (!found) {
        const double in_ratio = (double)width / (double)height;
        const double low = fmin(ranges->ratio[0], ranges->ratio[1]);
        const double high = fmax(ranges->ratio[0], ranges->ratio[1]);
        long crop_width = width, crop_height = height;
        if (in_ratio < low) {
            crop_height = round_half_even((double)crop_width / low);
        } else if (in_ratio > high) {
            crop_width = round_half_even((double)crop_height * high);
        }
        /* Python's // of these non-negative differences */
        box[0] = (int)((height - crop_height) / 2);
        box[1] = (int)((width - crop_width) / 2);
        box[2] = (int)crop_height;
        box[3] = (int)crop_width;
    }
    *flip = twister_random(&twister) < ranges->flip_prob;
}

struct Draw {
    uint64_t seed;
    DrawRanges ranges;
};

/* ---------------------------------------------------------------- decode_crop */

typedef struct Draw Draw;

typedef struct {
    const unsigned char *data;
    size_t length;
    const Draw *draw; /* NULL: the box below is given; else drawn from the header's size */
    double left, top, right, bottom; /* the box, in the DCT-scaled image's pixels */
    int reduction;                   /* 1, 2, 4 or 8 */
    int size;
    int flip;
    unsigned char *out; /* [size, size, 3] */
    /* filled by the decode */
    int decoded_columns, decoded_rows, skipped_rows;
    int windowed; /* 1: only the box's MCUs were decoded (a restart window) */
    const char *failure; /* a static reason, or errors.message */
} Job;

/* decode_crop's box arithmetic (pipeline/data/jpeg.py) for a drawn box of the image's pixels:
 * the DCT reduction (jpeg.dct_reduction), the draft factor (jpeg._draft_factor), the box divided
 * by it */
static void draw_job_box(Job *job, int image_width, int image_height) {
    int box[4], flip;
    draw_train_box(job->draw->seed, image_width, image_height, &job->draw->ranges, box, &flip);
    const double top = box[0], left = box[1], height = box[2], width = box[3];
    int reduction = 1;
    while (reduction < 8 && width / (reduction * 2) >= job->size &&
           height / (reduction * 2) >= job->size) {
        reduction *= 2;
    }
    double factor = 1.0;
    if (reduction > 1) {
        factor = (double)round_half_even(image_width / ceil((double)image_width / reduction));
    }
    job->left = left / factor;
    job->top = top / factor;
    job->right = (left + width) / factor;
    job->bottom = (top + height) / factor;
    job->reduction = reduction;
    job->flip = flip;
}

/* What run_job allocates. It lives in the caller's frame: a local of run_job assigned after
 * setjmp would be indeterminate after the longjmp of an error, and could not be freed. */
typedef struct {
    Coefficients horizontal, vertical;
    unsigned char *row, *intermediate, *line;
    short *pair_weights;
} Work;

static void free_work(Work *work) {
    free_coefficients(&work->horizontal);
    free_coefficients(&work->vertical);
    free(work->line);
    free(work->pair_weights);
}

/* The row and intermediate buffers are kept per thread from call to call (decode_crop releases
 * the GIL, so threads may decode at once): a fresh intermediate image of 100-300 KB is a fresh
 * mmap from malloc, touched page by page (~0.02 ms per image at 224 px, 2026-12-06, timing
 * builds). Each thread keeps its largest (~0.4 MB at 224 px) until exit. */
typedef struct {
    unsigned char *data;
    size_t capacity;
} Scratch;

static _Thread_local Scratch row_scratch, intermediate_scratch;

static unsigned char *scratch(Scratch *kept, size_t bytes) {
    if (bytes > kept->capacity) {
        free(kept->data);
        kept->data = malloc(bytes);
        kept->capacity = kept->data ? bytes : 0;
    }
    return kept->data;
}

/* ---------------------------------------------------------------- restart windows */

/* A file with a restart marker after every MCU (DRI = 1, what preprocess writes: core/jpegfile.py)
 * has every MCU byte-aligned in the scan, with DC predictions that start from zero: the MCUs of a
 * window can be cut out and given to libjpeg as a JPEG of their own. Its headers are the file's,
 * the frame's size the window's, the MCUs those of the window's rows and columns with their
 * restart markers numbered afresh. libjpeg then Huffman-decodes only the window's MCUs, where
 * jpeg_crop_scanline and jpeg_skip_scanlines still decode every MCU of every row above the box's
 * bottom (a baseline scan cannot skip one without decoding it). The IDCT of each block, the
 * upsampling inside the window and the colour conversion are the same arithmetic on the same
 * coefficients, so the window's pixels are the full decode's wherever an upsampling neighbour
 * is inside the window: run_job takes one pixel of margin each side, as jpeg_crop_scanline's
 * path does, and tests/data/test_jpeg.py holds the two paths to the same bytes. */

typedef struct {
    int x, y;          /* the window's origin, in output (DCT-scaled) pixels */
    size_t length;     /* of the window's JPEG in `data`; 0: no window (the whole-file path) */
    unsigned char *data;
} Window;

static _Thread_local Scratch window_scratch;

static inline unsigned read_be16(const unsigned char *bytes) {
    return ((unsigned)bytes[0] << 8) | bytes[1];
}

/* A sequential Huffman-coded file's MCU grid, from libjpeg's reading of its header */
typedef struct {
    int width, height;            /* the image's, pixels */
    int mcu_width, mcu_height;    /* pixels */
    int per_row, rows;            /* MCUs */
} McuGrid;

/* The window of MCU columns [c0, c1) and rows [r0, r1) of `data` (DRI = 1, one interleaved
 * scan, `grid`) as a JPEG in `out` (at least length + 2 bytes); returns its length, or 0 where
 * the file is not as its header says (a marker out of sequence, too few MCUs): run_job then
 * decodes the file itself, and libjpeg's errors say what is wrong. */
static size_t cut_window(const unsigned char *data, size_t length, const McuGrid *grid, int c0,
                         int c1, int r0, int r1, unsigned char *out) {
    size_t at = 2, frame = 0, scan = 0;
    if (length < 4 || data[0] != 0xFF || data[1] != 0xD8) {
        return 0;
    }
    while (scan == 0) { /* the markers up to the scan's first byte */
        while (at < length && data[at] == 0xFF && at + 1 < length && data[at + 1] == 0xFF) {
            at++; /* fill bytes */
        }
        if (at + 4 > length || data[at] != 0xFF) {
            return 0;
        }
        const unsigned marker = data[at + 1];
        const size_t end = at + 2 + read_be16(data + at + 2);
        if (end > length) {
            return 0;
        }
        if (marker == 0xC0 || marker == 0xC1) { /* the frame: baseline or extended Huffman */
            frame = at;
        } else if (marker == 0xDA) {
            scan = end;
        }
        at = end;
    }
    if (frame == 0 || frame + 9 > scan) {
        return 0;
    }
    const int per_row = grid->per_row;
    if (c1 > per_row || r1 > grid->rows || c0 >= c1 || r0 >= r1) {
        return 0;
    }
    memcpy(out, data, scan);
    const unsigned window_width =
        (unsigned)(c1 == per_row ? grid->width - c0 * grid->mcu_width
                                 : (c1 - c0) * grid->mcu_width);
    const unsigned window_height =
        (unsigned)(r1 == grid->rows ? grid->height - r0 * grid->mcu_height
                                    : (r1 - r0) * grid->mcu_height);
    out[frame + 5] = (unsigned char)(window_height >> 8);
    out[frame + 6] = (unsigned char)window_height;
    out[frame + 7] = (unsigned char)(window_width >> 8);
    out[frame + 8] = (unsigned char)window_width;
    size_t written = scan;
    long mcu = 0, kept = 0;
    const long first = (long)r0 * per_row + c0, last = (long)(r1 - 1) * per_row + c1 - 1;
    size_t start = scan; /* of MCU number `mcu` */
    at = scan;
    while (mcu <= last) {
        /* the end of MCU `mcu`: the next marker that is not a stuffed 0xFF 0x00 */
        const unsigned char *found = memchr(data + at, 0xFF, length - at);
        if (found == NULL) {
            return 0;
        }
        size_t marker = (size_t)(found - data);
        size_t next = marker + 1;
        while (next < length && data[next] == 0xFF) {
            next++; /* fill bytes before a marker */
        }
        if (next >= length) {
            return 0;
        }
        if (data[next] == 0x00) {
            at = next + 1;
            continue;
        }
        const int restart = data[next] >= 0xD0 && data[next] <= 0xD7;
        if (restart ? data[next] != 0xD0 + (mcu & 7) : (data[next] != 0xD9 || mcu != last)) {
            return 0; /* out of sequence, or the scan ends early */
        }
        const long row = mcu / per_row, column = mcu % per_row;
        if (mcu >= first && row >= r0 && column >= c0 && column < c1) {
            if (kept > 0) {
                out[written++] = 0xFF;
                out[written++] = (unsigned char)(0xD0 + ((kept - 1) & 7));
            }
            memcpy(out + written, data + start, marker - start);
            written += marker - start;
            kept++;
        }
        mcu++;
        start = at = next + 1;
    }
    out[written++] = 0xFF;
    out[written++] = 0xD9;
    return written;
}

/* The window of MCUs that holds output columns [x0, x1) and rows [y0, y1) (`cinfo` after
 * jpeg_read_header and jpeg_calc_output_dimensions), cut from job->data; window->length 0 where
 * the file has no restart marker after each MCU or the cut fails. */
static void find_window(struct jpeg_decompress_struct *cinfo, const Job *job, int x0, int x1,
                        int y0, int y1, Window *window) {
    window->length = 0;
    if (cinfo->restart_interval != 1 || cinfo->progressive_mode || cinfo->arith_code ||
        cinfo->comps_in_scan != cinfo->num_components) {
        return;
    }
    /* an MCU: one block of a lone component, else max_h x max_v blocks */
    McuGrid grid;
    grid.width = (int)cinfo->image_width;
    grid.height = (int)cinfo->image_height;
    grid.mcu_width = 8 * (cinfo->comps_in_scan == 1 ? 1 : cinfo->max_h_samp_factor);
    grid.mcu_height = 8 * (cinfo->comps_in_scan == 1 ? 1 : cinfo->max_v_samp_factor);
    grid.per_row = (grid.width + grid.mcu_width - 1) / grid.mcu_width;
    grid.rows = (grid.height + grid.mcu_height - 1) / grid.mcu_height;
    const int out_width = grid.mcu_width / job->reduction;
    const int out_height = grid.mcu_height / job->reduction;
    const int c0 = x0 / out_width, c1 = (x1 + out_width - 1) / out_width;
    const int r0 = y0 / out_height, r1 = (y1 + out_height - 1) / out_height;
    unsigned char *out = scratch(&window_scratch, job->length + 2);
    window->length =
        out == NULL ? 0 : cut_window(job->data, job->length, &grid, c0, c1, r0, r1, out);
    window->data = out;
    window->x = c0 * out_width;
    window->y = r0 * out_height;
}

/* the decode's settings, the same for a file and for its window */
static void set_output(struct jpeg_decompress_struct *cinfo, int reduction) {
    cinfo->out_color_space = JCS_EXT_RGBX; /* 4 bytes a pixel: one SIMD lane set per pixel */
    cinfo->scale_num = 1;
    cinfo->scale_denom = (unsigned int)reduction;
    cinfo->dct_method = JDCT_ISLOW;    /* Pillow's default */
    cinfo->do_fancy_upsampling = TRUE; /* Pillow's default */
}

static int run_job(Job *job, Work *work, ErrorManager *errors) {
    struct jpeg_decompress_struct cinfo;
    Coefficients *const horizontal = &work->horizontal, *const vertical = &work->vertical;
    setup_errors(&cinfo, errors);
    jpeg_create_decompress(&cinfo);
    if (setjmp(errors->jump)) {
        job->failure = errors->message;
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    jpeg_mem_src(&cinfo, job->data, (unsigned long)job->length);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space != JCS_YCbCr && cinfo.jpeg_color_space != JCS_RGB &&
        cinfo.jpeg_color_space != JCS_GRAYSCALE) {
        job->failure = "colour space is not YCbCr, RGB or grayscale";
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    if (job->draw != NULL) {
        draw_job_box(job, (int)cinfo.image_width, (int)cinfo.image_height);
    }
    set_output(&cinfo, job->reduction);
    jpeg_calc_output_dimensions(&cinfo);
    const int width = (int)cinfo.output_width, height = (int)cinfo.output_height;
    if (!compute_coefficients(width, job->left, job->right, job->size, horizontal) ||
        !compute_coefficients(height, job->top, job->bottom, job->size, vertical)) {
        job->failure = "out of memory";
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    /* the input window the resize reads: Pillow's ybox_first / ybox_last, and the same for x */
    int column_first = horizontal->first[0], column_last = 0;
    for (int index = 0; index < job->size; index++) {
        int first = horizontal->first[index], last = first + horizontal->count[index];
        column_first = first < column_first ? first : column_first;
        column_last = last > column_last ? last : column_last;
    }
    const int row_first = vertical->first[0];
    const int row_last = vertical->first[job->size - 1] + vertical->count[job->size - 1];
    if (column_last <= column_first || row_last <= row_first) {
        job->failure = "empty box";
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    /* one pixel of margin each side, so the window's edge pixels are upsampled from real
     * neighbours, not from the decoded region's replicated edge */
    const int margin_left = column_first > 0 ? column_first - 1 : 0;
    const int margin_right = column_last < width ? column_last + 1 : width;
    const int margin_top = row_first > 0 ? row_first - 1 : 0;
    const int margin_bottom = row_last < height ? row_last + 1 : height;
    Window window;
    find_window(&cinfo, job, margin_left, margin_right, margin_top, margin_bottom, &window);
    JDIMENSION crop_offset, crop_width;
    int line_shift = 0; /* the output row of the decoder's row 0 */
    if (window.length > 0) {
        /* the window's own JPEG: its row 0 and column 0 are the file's window.y and window.x */
        jpeg_abort_decompress(&cinfo);
        jpeg_mem_src(&cinfo, window.data, (unsigned long)window.length);
        jpeg_read_header(&cinfo, TRUE);
        set_output(&cinfo, job->reduction);
        jpeg_start_decompress(&cinfo);
        crop_offset = (JDIMENSION)window.x;
        crop_width = cinfo.output_width;
        line_shift = window.y;
        job->windowed = 1;
    } else {
        /* libjpeg-turbo widens the columns to whole iMCU columns */
        jpeg_start_decompress(&cinfo);
        crop_offset = (JDIMENSION)margin_left;
        crop_width = (JDIMENSION)(margin_right - margin_left);
        if (crop_offset > 0 || (int)crop_width < width) {
            jpeg_crop_scanline(&cinfo, &crop_offset, &crop_width);
        }
    }
    job->decoded_columns = (int)crop_width;
    const int skip = margin_top - line_shift;
    if (skip > 0) {
        jpeg_skip_scanlines(&cinfo, (JDIMENSION)skip);
    }
    job->skipped_rows = margin_top;
    /* a box of whole pixels at scale 1 (the val centre crop of a 256 px image): each output
     * pixel is one decoded pixel, so the decoded rows go straight to `out`, with no resize */
    int copy = horizontal->widest == 1 && vertical->widest == 1;
    for (int index = 1; copy && index < job->size; index++) {
        copy = horizontal->first[index] == horizontal->first[0] + index &&
               vertical->first[index] == vertical->first[0] + index;
    }
    /* ROWS decoded rows at a time go through the horizontal pass; past each row's decoded
     * columns, zero pixels, read with zero weight (AVX2 reads up to 3 taps past `widest`) */
    enum { ROWS = 4 };
    const int groups = (horizontal->widest + 3) / 4;
    const size_t row_stride = ((size_t)crop_width + horizontal->taps + 4) * 4;
    work->row = scratch(&row_scratch, ROWS * row_stride);
    work->intermediate =
        scratch(&intermediate_scratch, copy ? 1 : (size_t)(row_last - row_first) * job->size * 4);
    work->line = malloc((size_t)4 * job->size);
    work->pair_weights = build_pair_weights(horizontal, job->size, groups);
    if (!work->row || !work->intermediate || !work->line || !work->pair_weights) {
        job->failure = "out of memory";
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    for (int slot = 0; work->row && slot < ROWS; slot++) {
        memset(work->row + slot * row_stride + (size_t)crop_width * 4, 0,
               row_stride - (size_t)crop_width * 4);
    }
    int held = 0; /* decoded rows in work->row, waiting for the horizontal pass */
    while ((int)cinfo.output_scanline + line_shift < row_last) {
        const int line = (int)cinfo.output_scanline + line_shift;
        JSAMPROW rows[1] = {work->row + (size_t)held * row_stride};
        if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) {
            job->failure = "the decoder returned no row";
            jpeg_destroy_decompress(&cinfo);
            return 0;
        }
        if (line < row_first) {
            continue; /* the margin row above the box: upsampling context only */
        }
        if (copy) {
            write_rgb_row(rows[0] + 4 * (horizontal->first[0] - (int)crop_offset), job->size,
                          job->flip, job->out + (size_t)(line - row_first) * job->size * 3);
            continue;
        }
        held++;
        if (held == ROWS || line + 1 == row_last) {
            resample_rows(work->row, row_stride, held, (int)crop_offset, horizontal,
                          work->pair_weights, groups, job->size,
                          work->intermediate + (size_t)(line + 1 - held - row_first) * job->size * 4);
            held = 0;
        }
    }
    job->decoded_rows = row_last - margin_top;
    /* the rows below the box are never decoded: destroy (an abort), never finish */
    jpeg_destroy_decompress(&cinfo);
    if (errors->warnings) { /* out may be half written: the caller decodes again with Pillow */
        job->failure = errors->message;
        return 0;
    }
    if (!copy) {
        resample_columns(work->intermediate, row_first, vertical, job->size, job->flip,
                         work->line, job->out);
    }
    return 1;
}

static PyObject *decode_crop(PyObject *self, PyObject *args) {
    Py_buffer data, out;
    Job job = {0};
    if (!PyArg_ParseTuple(args, "y*w*ddddiip", &data, &out, &job.left, &job.top, &job.right,
                          &job.bottom, &job.reduction, &job.size, &job.flip)) {
        return NULL;
    }
    if (job.size < 1 || out.len != (Py_ssize_t)job.size * job.size * 3 ||
        !PyBuffer_IsContiguous(&out, 'C')) {
        PyErr_Format(PyExc_ValueError,
                     "out must be a C-contiguous writable buffer of size*size*3 = %zd bytes, "
                     "got %zd",
                     (Py_ssize_t)job.size * job.size * 3, out.len);
        PyBuffer_Release(&data);
        PyBuffer_Release(&out);
        return NULL;
    }
    if (job.reduction != 1 && job.reduction != 2 && job.reduction != 4 && job.reduction != 8) {
        PyErr_Format(PyExc_ValueError, "reduction must be 1, 2, 4 or 8, got %d", job.reduction);
        PyBuffer_Release(&data);
        PyBuffer_Release(&out);
        return NULL;
    }
    job.data = data.buf;
    job.length = (size_t)data.len;
    job.out = out.buf;
    ErrorManager errors;
    Work work = {0};
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = run_job(&job, &work, &errors);
    free_work(&work);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    if (!ok) {
        PyErr_SetString(JpegError, job.failure ? job.failure : "decode failed");
        return NULL;
    }
    return Py_BuildValue("(iiiO)", job.decoded_columns, job.decoded_rows, job.skipped_rows,
                         job.windowed ? Py_True : Py_False);
}

/* ---------------------------------------------------------------- decode_train_batch */

static _Thread_local Scratch file_scratch;

/* The whole file, one open, fstat and read (as transforms._read), into this thread's kept
 * buffer: its length, or -1 on any error (the caller's Python path reads the file again and
 * raises what Python raises). */
static Py_ssize_t read_file(const char *path, Scratch *kept) {
    const int descriptor = open(path, O_RDONLY | O_CLOEXEC);
    if (descriptor < 0) {
        return -1;
    }
    struct stat status;
    if (fstat(descriptor, &status) != 0 || !S_ISREG(status.st_mode) || status.st_size <= 0) {
        close(descriptor);
        return -1;
    }
    const size_t length = (size_t)status.st_size;
    unsigned char *data = scratch(kept, length);
    size_t done = 0;
    while (data != NULL && done < length) {
        const ssize_t got = read(descriptor, data + done, length - done);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            break; /* an error, or shorter than fstat said: what there is */
        }
        done += (size_t)got;
    }
    close(descriptor);
    return data == NULL || done == 0 ? -1 : (Py_ssize_t)done;
}

/* jpeg.probe's ends_with_eoi: an end-of-image marker in the last 32 bytes */
static int ends_with_eoi(const unsigned char *data, size_t length) {
    for (size_t index = length > 32 ? length - 32 : 0; index + 1 < length; index++) {
        if (data[index] == 0xFF && data[index + 1] == 0xD9) {
            return 1;
        }
    }
    return 0;
}

typedef struct {
    PyObject *path; /* bytes (PyUnicode_FSConverter), or NULL */
    Py_buffer buffer;
    int has_buffer;
} Source;

static PyObject *decode_train_batch(PyObject *self, PyObject *args) {
    PyObject *items;
    Py_buffer seeds, out;
    DrawRanges ranges;
    int size;
    if (!PyArg_ParseTuple(args, "Oy*(dd)(dd)diw*", &items, &seeds, &ranges.scale[0],
                          &ranges.scale[1], &ranges.ratio[0], &ranges.ratio[1],
                          &ranges.flip_prob, &size, &out)) {
        return NULL;
    }
    PyObject *sequence = PySequence_Fast(items, "sources must be a sequence");
    const Py_ssize_t count = sequence ? PySequence_Fast_GET_SIZE(sequence) : 0;
    const size_t image_bytes = (size_t)(size > 0 ? size : 0) * (size_t)size * 3;
    if (sequence != NULL &&
        (size < 1 || seeds.len != count * (Py_ssize_t)sizeof(uint64_t) ||
         out.len != count * (Py_ssize_t)image_bytes || !PyBuffer_IsContiguous(&out, 'C'))) {
        PyErr_Format(PyExc_ValueError,
                     "%zd sources need %zd bytes of uint64 seeds (got %zd) and a C-contiguous "
                     "writable out of count*size*size*3 = %zd bytes (got %zd)",
                     count, count * (Py_ssize_t)sizeof(uint64_t), seeds.len,
                     count * (Py_ssize_t)image_bytes, out.len);
        Py_CLEAR(sequence);
    }
    Source *sources = sequence ? PyMem_Calloc((size_t)count + 1, sizeof(Source)) : NULL;
    unsigned char *done = sources ? PyMem_Calloc((size_t)count + 1, 1) : NULL;
    if (sequence == NULL || done == NULL) {
        if (sequence != NULL) {
            PyErr_NoMemory();
        }
        PyMem_Free(sources);
        Py_XDECREF(sequence);
        PyBuffer_Release(&seeds);
        PyBuffer_Release(&out);
        return NULL;
    }
    for (Py_ssize_t index = 0; index < count; index++) {
        PyObject *item = PySequence_Fast_GET_ITEM(sequence, index);
        if (PyObject_CheckBuffer(item)) {
            sources[index].has_buffer =
                PyObject_GetBuffer(item, &sources[index].buffer, PyBUF_SIMPLE) == 0;
        } else if (!PyUnicode_FSConverter(item, &sources[index].path)) {
            sources[index].path = NULL; /* neither bytes nor a path: the Python path says */
        }
        PyErr_Clear();
    }
    const uint64_t *seed_values = (const uint64_t *)seeds.buf;
    unsigned char *target = (unsigned char *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t index = 0; index < count; index++) {
        const unsigned char *data = NULL;
        size_t length = 0;
        if (sources[index].path != NULL) {
            const Py_ssize_t got = read_file(PyBytes_AS_STRING(sources[index].path), &file_scratch);
            data = got > 0 ? file_scratch.data : NULL;
            length = got > 0 ? (size_t)got : 0;
        } else if (sources[index].has_buffer) {
            data = sources[index].buffer.buf;
            length = (size_t)sources[index].buffer.len;
        }
        if (data == NULL || !ends_with_eoi(data, length)) {
            continue; /* truncated, empty, unreadable: the Python path decides, as before */
        }
        Draw draw = {0};
        draw.seed = seed_values[index];
        draw.ranges = ranges;
        Job job = {0};
        job.data = data;
        job.length = length;
        job.draw = &draw;
        job.size = size;
        job.out = target + (size_t)index * image_bytes;
        ErrorManager errors;
        Work work = {0};
        done[index] = (unsigned char)run_job(&job, &work, &errors);
        free_work(&work);
    }
    Py_END_ALLOW_THREADS
    PyObject *left = PyList_New(0);
    for (Py_ssize_t index = 0; index < count; index++) {
        if (left != NULL && !done[index]) {
            PyObject *position = PyLong_FromSsize_t(index);
            if (position == NULL || PyList_Append(left, position) < 0) {
                Py_CLEAR(left);
            }
            Py_XDECREF(position);
        }
        Py_XDECREF(sources[index].path);
        if (sources[index].has_buffer) {
            PyBuffer_Release(&sources[index].buffer);
        }
    }
    PyMem_Free(done);
    PyMem_Free(sources);
    Py_DECREF(sequence);
    PyBuffer_Release(&seeds);
    PyBuffer_Release(&out);
    return left;
}

static PyObject *draw_train(PyObject *self, PyObject *args) {
    unsigned long long seed;
    int width, height;
    DrawRanges ranges;
    if (!PyArg_ParseTuple(args, "Kii(dd)(dd)d", &seed, &width, &height, &ranges.scale[0],
                          &ranges.scale[1], &ranges.ratio[0], &ranges.ratio[1],
                          &ranges.flip_prob)) {
        return NULL;
    }
    if (width < 1 || height < 1) {
        PyErr_Format(PyExc_ValueError, "image size must be positive, got %d x %d", width,
                     height);
        return NULL;
    }
    int box[4], flip;
    draw_train_box((uint64_t)seed, width, height, &ranges, box, &flip);
    return Py_BuildValue("(iiiiO)", box[0], box[1], box[2], box[3], flip ? Py_True : Py_False);
}

/* ---------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"probe", probe, METH_VARARGS,
     "probe(data) -> (width, height, components, progressive, color_space, sampling): the JPEG "
     "header only."},
    {"decode_crop", decode_crop, METH_VARARGS,
     "decode_crop(data, out, left, top, right, bottom, reduction, size, flip) -> (decoded "
     "columns, decoded rows, skipped rows, windowed): the box (in the 1/reduction-scaled "
     "image's pixels) resized bilinearly to out [size, size, 3] uint8, mirrored if flip."},
    {"decode_train_batch", decode_train_batch, METH_VARARGS,
     "decode_train_batch(sources, seeds, scale, ratio, flip_prob, size, out) -> [positions "
     "left]: each source (a path, read here, or the file's bytes) read, its crop and flip "
     "drawn from random.Random(seeds[i]) as transforms.decode_train draws them, and decoded "
     "into out[i]; positions it did not decode (not a JPEG, CMYK, truncated, damaged, "
     "unreadable) are returned for the Python path. The GIL is released for the batch."},
    {"draw_train", draw_train, METH_VARARGS,
     "draw_train(seed, width, height, scale, ratio, flip_prob) -> (top, left, height, width, "
     "flip): the draws of decode_train_batch, for tests."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpeg", "libjpeg-turbo ROI decoding (see pipeline/data/jpeg.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__jpeg(void) {
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL) {
        return NULL;
    }
    JpegError = PyErr_NewException("pipeline.data._jpeg.JpegError", PyExc_ValueError, NULL);
    if (JpegError == NULL || PyModule_AddObjectRef(mod, "JpegError", JpegError) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    if (PyModule_AddIntConstant(mod, "LIBJPEG_VERSION", JPEG_LIB_VERSION) < 0 ||
        PyModule_AddStringConstant(mod, "SIMD", ROI_AVX2 ? "avx2" : "plain") < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}

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
 * The resize is Pillow's: the same filter (triangle, support scaled by the downscale factor), the
 * same coefficients and bounds (Resample.c precompute_coeffs), horizontal pass first into an
 * 8-bit image, then the vertical pass. It differs only in arithmetic (float32 here, 22-bit or
 * 15-bit fixed point in Pillow / pillow-simd), so a pixel differs by at most a level or two.
 *
 * The GIL is released from the first libjpeg call to the last write.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
} Coefficients;

static void free_coefficients(Coefficients *coefficients) {
    free(coefficients->first);
    free(coefficients->count);
    free(coefficients->weights);
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
    return 1;
}

/* ---------------------------------------------------------------- passes */

/* Both passes work on RGBX pixels (libjpeg-turbo's JCS_EXT_RGBX output), so a pixel is 4 float
 * lanes. Rounding is Pillow's: +0.5, then truncation, clipped to 0..255 (every weight of the
 * triangle filter is >= 0, so no sum is negative). With AVX2 (the Makefile's CC is
 * "cc -mavx2" where the CPU has it) two pixels share one 8-lane vector; elsewhere the same
 * arithmetic runs in plain C. */

static inline unsigned char round_clip(float value) {
    value += 0.5f;
    return value >= 255.0f ? 255 : (unsigned char)value;
}

#if defined(__AVX2__)
#include <immintrin.h>

static inline int load32(const unsigned char *source) {
    int value;
    memcpy(&value, source, 4);
    return value;
}

/* 8 float sums → 8 bytes, Pillow's rounding */
static inline void store8(__m256 sum, unsigned char *target) {
    __m256i rounded = _mm256_cvttps_epi32(_mm256_add_ps(sum, _mm256_set1_ps(0.5f)));
    __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(rounded),
                                    _mm256_extracti128_si256(rounded, 1));
    _mm_storel_epi64((__m128i *)target, _mm_packus_epi16(words, words));
}

/* one decoded RGBX row (starting at column `row_offset` of the scaled image) → `size` RGBX
 * pixels of the intermediate image; `pair_weights` holds, for output pixels 2k and 2k+1 and each
 * tap, their two weights broadcast over 4 lanes each */
static void resample_row(const unsigned char *row, int row_offset, const Coefficients *horizontal,
                         const float *pair_weights, int size, unsigned char *target) {
    const int taps = horizontal->taps, widest = horizontal->widest;
    int index = 0;
    /* every pixel runs the same `widest` taps (zero weights past its count, zero pixels past
     * the row's end): a loop of one length is always predicted, counts of 2 or 3 are not */
    for (; index + 2 <= size; index += 2) {
        const unsigned char *first = row + 4 * (horizontal->first[index] - row_offset);
        const unsigned char *second = row + 4 * (horizontal->first[index + 1] - row_offset);
        const float *weights = pair_weights + (size_t)(index / 2) * taps * 8;
        __m256 sum = _mm256_setzero_ps();
        for (int tap = 0; tap < widest; tap++) {
            __m128i both = _mm_insert_epi32(_mm_cvtsi32_si128(load32(first + 4 * tap)),
                                            load32(second + 4 * tap), 1);
            __m256 pixels = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(both));
            sum = _mm256_add_ps(sum, _mm256_mul_ps(pixels, _mm256_loadu_ps(weights + 8 * tap)));
        }
        store8(sum, target + 4 * index);
    }
    for (; index < size; index++) { /* an odd size's last pixel */
        const float *weights = horizontal->weights + (size_t)index * taps;
        const unsigned char *source = row + 4 * (horizontal->first[index] - row_offset);
        for (int channel = 0; channel < 4; channel++) {
            float sum = 0.0f;
            for (int tap = 0; tap < widest; tap++) {
                sum += source[4 * tap + channel] * weights[tap];
            }
            target[4 * index + channel] = round_clip(sum);
        }
    }
}

/* one output row (4 * size bytes): the weighted sum of `count` intermediate rows */
static void resample_column_row(const unsigned char *source, size_t stride, const float *weights,
                                int count, int size, unsigned char *target) {
    const int width = 4 * size;
    int x = 0;
    for (; x + 8 <= width; x += 8) {
        __m256 sum = _mm256_setzero_ps();
        for (int tap = 0; tap < count; tap++) {
            __m128i bytes = _mm_loadl_epi64((const __m128i *)(source + tap * stride + x));
            sum = _mm256_add_ps(sum, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)),
                                                   _mm256_set1_ps(weights[tap])));
        }
        store8(sum, target + x);
    }
    for (; x < width; x++) {
        float sum = 0.0f;
        for (int tap = 0; tap < count; tap++) {
            sum += source[tap * stride + x] * weights[tap];
        }
        target[x] = round_clip(sum);
    }
}

/* RGBX → RGB, mirrored when `flip`: 4 pixels a shuffle, written in increasing address order so
 * that each 16-byte store's 4 spare bytes are overwritten by the next; the row's last group
 * goes through a copy, never past the row's end */
static void write_rgb_row(const unsigned char *line, int size, int flip, unsigned char *target) {
    const __m128i keep = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    const __m128i mirror = _mm_setr_epi8(12, 13, 14, 8, 9, 10, 4, 5, 6, 0, 1, 2, -1, -1, -1, -1);
    const int groups = size / 4, end = 3 * size;
    for (int x = 4 * groups; x < size; x++) { /* pixels past the last whole group */
        memcpy(target + 3 * (flip ? size - 1 - x : x), line + 4 * x, 3);
    }
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
}

static float *build_pair_weights(const Coefficients *horizontal, int size) {
    const int taps = horizontal->taps;
    float *pairs = calloc((size_t)(size / 2 + 1) * taps * 8, sizeof(float));
    if (pairs == NULL) {
        return NULL;
    }
    for (int index = 0; index + 1 < size; index += 2) {
        for (int tap = 0; tap < taps; tap++) {
            float *lanes = pairs + ((size_t)(index / 2) * taps + tap) * 8;
            for (int lane = 0; lane < 4; lane++) {
                lanes[lane] = horizontal->weights[(size_t)index * taps + tap];
                lanes[4 + lane] = horizontal->weights[(size_t)(index + 1) * taps + tap];
            }
        }
    }
    return pairs;
}
#else
static void resample_row(const unsigned char *row, int row_offset, const Coefficients *horizontal,
                         const float *pair_weights, int size, unsigned char *target) {
    (void)pair_weights;
    for (int index = 0; index < size; index++) {
        const float *weights = horizontal->weights + (size_t)index * horizontal->taps;
        const unsigned char *source = row + 4 * (horizontal->first[index] - row_offset);
        float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int tap = 0; tap < horizontal->widest; tap++) {
            for (int channel = 0; channel < 4; channel++) {
                sum[channel] += source[4 * tap + channel] * weights[tap];
            }
        }
        for (int channel = 0; channel < 4; channel++) {
            target[4 * index + channel] = round_clip(sum[channel]);
        }
    }
}

static void resample_column_row(const unsigned char *source, size_t stride, const float *weights,
                                int count, int size, unsigned char *target) {
    for (int x = 0; x < 4 * size; x++) {
        float sum = 0.0f;
        for (int tap = 0; tap < count; tap++) {
            sum += source[tap * stride + x] * weights[tap];
        }
        target[x] = round_clip(sum);
    }
}

static void write_rgb_row(const unsigned char *line, int size, int flip, unsigned char *target) {
    for (int x = 0; x < size; x++) {
        memcpy(target + 3 * (flip ? size - 1 - x : x), line + 4 * x, 3);
    }
}

static float *build_pair_weights(const Coefficients *horizontal, int size) {
    (void)horizontal;
    (void)size;
    return malloc(1); /* unused without AVX2 */
}
#endif

/* the intermediate image's rows → out [size, size, 3], mirrored when `flip`; `line` holds one
 * RGBX output row */
static void resample_columns(const unsigned char *intermediate, int first_row,
                             const Coefficients *vertical, int size, int flip,
                             unsigned char *line, unsigned char *out) {
    const size_t stride = (size_t)4 * size;
    for (int y = 0; y < size; y++) {
        resample_column_row(intermediate + (size_t)(vertical->first[y] - first_row) * stride,
                            stride, vertical->weights + (size_t)y * vertical->taps,
                            vertical->count[y], size, line);
        write_rgb_row(line, size, flip, out + (size_t)y * size * 3);
    }
}

/* ---------------------------------------------------------------- decode_crop */

typedef struct {
    const unsigned char *data;
    size_t length;
    double left, top, right, bottom; /* the box, in the DCT-scaled image's pixels */
    int reduction;                   /* 1, 2, 4 or 8 */
    int size;
    int flip;
    unsigned char *out; /* [size, size, 3] */
    /* filled by the decode */
    int decoded_columns, decoded_rows, skipped_rows;
    const char *failure; /* a static reason, or errors.message */
} Job;

/* What run_job allocates. It lives in the caller's frame: a local of run_job assigned after
 * setjmp would be indeterminate after the longjmp of an error, and could not be freed. */
typedef struct {
    Coefficients horizontal, vertical;
    unsigned char *row, *intermediate, *line;
    float *pair_weights;
} Work;

static void free_work(Work *work) {
    free_coefficients(&work->horizontal);
    free_coefficients(&work->vertical);
    free(work->row);
    free(work->intermediate);
    free(work->line);
    free(work->pair_weights);
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
    cinfo.out_color_space = JCS_EXT_RGBX; /* 4 bytes a pixel: one SIMD lane set per pixel */
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)job->reduction;
    cinfo.dct_method = JDCT_ISLOW;    /* Pillow's default */
    cinfo.do_fancy_upsampling = TRUE; /* Pillow's default */
    jpeg_start_decompress(&cinfo);
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
     * neighbours, not from the ROI's replicated edge; libjpeg-turbo widens to iMCU columns */
    JDIMENSION crop_offset = (JDIMENSION)(column_first > 0 ? column_first - 1 : 0);
    JDIMENSION crop_width =
        (JDIMENSION)((column_last < width ? column_last + 1 : width) - (int)crop_offset);
    if (crop_offset > 0 || (int)crop_width < width) {
        jpeg_crop_scanline(&cinfo, &crop_offset, &crop_width);
    }
    job->decoded_columns = (int)crop_width;
    const int skip = row_first > 0 ? row_first - 1 : 0;
    if (skip > 0) {
        jpeg_skip_scanlines(&cinfo, (JDIMENSION)skip);
    }
    job->skipped_rows = skip;
    /* zero pixels past the decoded columns, read with zero weight by resample_row */
    work->row = calloc((size_t)crop_width + horizontal->taps, 4);
    work->intermediate = malloc((size_t)(row_last - row_first) * job->size * 4);
    work->line = malloc((size_t)4 * job->size);
    work->pair_weights = build_pair_weights(horizontal, job->size);
    if (!work->row || !work->intermediate || !work->line || !work->pair_weights) {
        job->failure = "out of memory";
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    while ((int)cinfo.output_scanline < row_last) {
        const int line = (int)cinfo.output_scanline;
        JSAMPROW rows[1] = {work->row};
        if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) {
            job->failure = "the decoder returned no row";
            jpeg_destroy_decompress(&cinfo);
            return 0;
        }
        if (line >= row_first) {
            resample_row(work->row, (int)crop_offset, horizontal, work->pair_weights, job->size,
                         work->intermediate + (size_t)(line - row_first) * job->size * 4);
        }
    }
    job->decoded_rows = row_last - skip;
    /* the rows below the box are never decoded: destroy (an abort), never finish */
    jpeg_destroy_decompress(&cinfo);
    if (errors->warnings) {
        job->failure = errors->message;
        return 0;
    }
    resample_columns(work->intermediate, row_first, vertical, job->size, job->flip, work->line,
                     job->out);
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
    return Py_BuildValue("(iii)", job.decoded_columns, job.decoded_rows, job.skipped_rows);
}

/* ---------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"probe", probe, METH_VARARGS,
     "probe(data) -> (width, height, components, progressive, color_space, sampling): the JPEG "
     "header only."},
    {"decode_crop", decode_crop, METH_VARARGS,
     "decode_crop(data, out, left, top, right, bottom, reduction, size, flip) -> (decoded "
     "columns, decoded rows, skipped rows): the box (in the 1/reduction-scaled image's pixels) "
     "resized bilinearly to out [size, size, 3] uint8, mirrored if flip."},
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
    if (PyModule_AddIntConstant(mod, "LIBJPEG_VERSION", JPEG_LIB_VERSION) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}

/* Lossless JPEG rewriting for the JPEGs that preprocess writes (core/jpegfile.py): the same DCT
 * coefficients, so the same pixels for every decoder, with a restart marker after every
 * `interval` MCUs and Huffman tables optimized for the image (which pays for the markers: the
 * files come out within about 2 % of the size they had). libjpeg's transcoding API, as jpegtran
 * -restart NB -optimize -copy all does it: jpeg_read_coefficients, jpeg_copy_critical_parameters,
 * jpeg_write_coefficients, then the comment and APPn markers copied in their order.
 *
 * Why: a restart marker after each MCU lets the ROI decoder (pipeline/data/_jpeg.c) hand libjpeg
 * only the MCUs that a crop keeps, where a file without them must be Huffman-decoded from its
 * first row to the crop's last, whole rows at a time.
 *
 * The GIL is released for the transcode. Built like pipeline/data/_jpeg.c (pyproject's
 * ext-modules, optional): where it did not build, core/jpegfile.py says so in one line and the
 * files are written as Pillow encoded them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

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
    /* a warning (corrupt data, premature end) fails the rewrite: its output would not be the
     * input's pixels */
    ErrorManager *errors = (ErrorManager *)cinfo->err;
    if (level < 0 && errors->warnings++ == 0) {
        (*cinfo->err->format_message)(cinfo, errors->message);
    }
}

static PyObject *JpegError;

typedef struct {
    const unsigned char *data;
    size_t length;
    int interval;
    unsigned char *out; /* malloc'd by jpeg_mem_dest */
    unsigned long out_length;
    const char *failure;
} Rewrite;

static int is_marker(const jpeg_saved_marker_ptr marker, int code, const char *tag, size_t size) {
    return marker->marker == code && marker->data_length >= size &&
           memcmp(marker->data, tag, size) == 0;
}

static int rewrite(Rewrite *job, ErrorManager *errors) {
    struct jpeg_decompress_struct source;
    struct jpeg_compress_struct target;
    source.err = jpeg_std_error(&errors->pub); /* one error manager for both, as jpegtran's */
    target.err = &errors->pub;
    errors->pub.error_exit = error_exit;
    errors->pub.emit_message = emit_message;
    errors->warnings = 0;
    volatile int created = 0;
    if (setjmp(errors->jump)) {
        job->failure = errors->message;
        if (created > 1) {
            jpeg_destroy_compress(&target);
        }
        if (created > 0) {
            jpeg_destroy_decompress(&source);
        }
        return 0;
    }
    jpeg_create_decompress(&source);
    created = 1;
    jpeg_create_compress(&target);
    created = 2;
    jpeg_mem_src(&source, job->data, (unsigned long)job->length);
    jpeg_save_markers(&source, JPEG_COM, 0xFFFF);
    for (int app = 0; app < 16; app++) {
        jpeg_save_markers(&source, JPEG_APP0 + app, 0xFFFF);
    }
    jpeg_read_header(&source, TRUE);
    jvirt_barray_ptr *coefficients = jpeg_read_coefficients(&source);
    if (errors->warnings) {
        job->failure = errors->message;
        jpeg_destroy_compress(&target);
        jpeg_destroy_decompress(&source);
        return 0;
    }
    jpeg_copy_critical_parameters(&source, &target);
    target.restart_interval = (unsigned int)job->interval;
    target.restart_in_rows = 0;
    target.optimize_coding = TRUE;
    target.write_JFIF_header = source.saw_JFIF_marker;
    target.density_unit = source.density_unit;
    target.X_density = source.X_density;
    target.Y_density = source.Y_density;
    jpeg_mem_dest(&target, &job->out, &job->out_length);
    jpeg_write_coefficients(&target, coefficients);
    for (jpeg_saved_marker_ptr marker = source.marker_list; marker != NULL; marker = marker->next) {
        /* the writer makes its own JFIF and Adobe headers: the source's are not copied twice */
        if ((target.write_JFIF_header && is_marker(marker, JPEG_APP0, "JFIF\0", 5)) ||
            (target.write_Adobe_marker && is_marker(marker, JPEG_APP0 + 14, "Adobe", 5))) {
            continue;
        }
        jpeg_write_marker(&target, marker->marker, marker->data, marker->data_length);
    }
    jpeg_finish_compress(&target);
    jpeg_destroy_compress(&target);
    jpeg_finish_decompress(&source);
    jpeg_destroy_decompress(&source);
    return 1;
}

static PyObject *set_restart_interval(PyObject *self, PyObject *args) {
    Py_buffer data;
    Rewrite job = {0};
    if (!PyArg_ParseTuple(args, "y*i", &data, &job.interval)) {
        return NULL;
    }
    if (job.interval < 0 || job.interval > 65535) {
        PyErr_Format(PyExc_ValueError, "interval must be 0..65535 MCUs, got %d", job.interval);
        PyBuffer_Release(&data);
        return NULL;
    }
    job.data = data.buf;
    job.length = (size_t)data.len;
    ErrorManager errors;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = rewrite(&job, &errors);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyObject *result = NULL;
    if (ok) {
        result = PyBytes_FromStringAndSize((const char *)job.out, (Py_ssize_t)job.out_length);
    } else {
        PyErr_SetString(JpegError, job.failure ? job.failure : "the rewrite failed");
    }
    free(job.out);
    return result;
}

static PyMethodDef methods[] = {
    {"set_restart_interval", set_restart_interval, METH_VARARGS,
     "set_restart_interval(data, interval) -> bytes: the JPEG rewritten losslessly (the same "
     "coefficients, optimized Huffman tables, the comment and APPn markers kept) with a restart "
     "marker after every `interval` MCUs (0: none)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpegtran", "Lossless JPEG rewriting (see core/jpegfile.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__jpegtran(void) {
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL) {
        return NULL;
    }
    JpegError = PyErr_NewException("core._jpegtran.JpegError", PyExc_ValueError, NULL);
    if (JpegError == NULL || PyModule_AddObjectRef(mod, "JpegError", JpegError) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}

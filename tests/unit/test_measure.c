/*
 * test_measure.c - measure arithmetic and the -o option parser, on values
 * checked against qemu-img 7.2 and 10.0 (the integration tests compare
 * the whole command against both).
 */
#include <errno.h>
#include <stdint.h>

#include "check.h"
#include "engine/measure.h"
#include "host/createopts.h"

static struct ins_measure_result qcow2(uint64_t size, uint64_t cluster,
                                       uint64_t refcount_bits, int extl2)
{
    struct ins_measure_target t = { 0 };
    struct ins_measure_result r;
    char err[256];

    t.fmt = INS_MEASURE_QCOW2;
    t.size = size;
    t.cluster_size = cluster;
    t.refcount_bits = refcount_bits;
    t.version = 3;
    t.extended_l2 = extl2;
    CHECK(ins_measure_compute(&t, NULL, &r, err, sizeof(err)) == 0);
    return r;
}

static void test_qcow2(void)
{
    struct ins_measure_result r = qcow2(1ull << 30, 65536, 16, 0);
    struct ins_measure_target t = { 0 };
    struct ins_measure_source src = { 0 };
    char err[256];

    CHECK(r.required == 393216 && r.fully_allocated == 1074135040);
    r = qcow2(1ull << 30, 512, 16, 0);
    CHECK(r.required == 21385216 && r.fully_allocated == 1095127040);
    r = qcow2(1 << 20, 65536, 16, 0);
    CHECK(r.required == 327680 && r.fully_allocated == 1376256);
    CHECK(!r.has_bitmaps);

    /* 128 GiB is the most 512-byte clusters can address. */
    t.fmt = INS_MEASURE_QCOW2;
    t.cluster_size = 512;
    t.refcount_bits = 16;
    t.version = 3;
    t.size = 128ull << 30;
    CHECK(ins_measure_compute(&t, NULL, &r, err, sizeof(err)) == 0);
    t.size += 1;
    CHECK(ins_measure_compute(&t, NULL, &r, err, sizeof(err)) < 0);
    CHECK_STR(err, "The image size is too large (try using a larger cluster size)");

    /* A source: its length replaces the size, its data the clusters. */
    t.size = 0;
    t.cluster_size = 65536;
    src.length = 1000;
    src.data_bytes = 65536;
    src.scanned = 1;
    src.supports_bitmaps = 1;
    CHECK(ins_measure_compute(&t, &src, &r, err, sizeof(err)) == 0);
    CHECK(r.required == 393216 && r.fully_allocated == 393216);
    CHECK(r.has_bitmaps && r.bitmaps == 0);
}

static void test_luks(void)
{
    CHECK(ins_luks_header_len(64) == 2068480);     /* aes-256-xts */
    CHECK(ins_luks_header_len(32) == 1052672);
    CHECK(ins_luks_header_len(16) == 528384);
    CHECK(ins_luks_header_len(48) == 1544192);
}

static void test_bounds(void)
{
    struct ins_measure_target t = { 0 };
    struct ins_measure_result r;
    char err[256];

    /* Empty images equal what qemu-img create writes. */
    t.size = 10 << 20;
    t.fmt = INS_MEASURE_VDI;
    CHECK(ins_measure_compute(&t, NULL, &r, err, sizeof(err)) == 0);
    CHECK(r.required == 1024 && r.fully_allocated == 10486784);
    t.fmt = INS_MEASURE_VPC;
    CHECK(ins_measure_compute(&t, NULL, &r, err, sizeof(err)) == 0);
    CHECK(r.required == 2560);
    t.fmt = INS_MEASURE_VHDX;
    CHECK(ins_measure_compute(&t, NULL, &r, err, sizeof(err)) == 0);
    CHECK(r.required == 8388608);
    t.fmt = INS_MEASURE_VMDK;
    CHECK(ins_measure_compute(&t, NULL, &r, err, sizeof(err)) == 0);
    CHECK(r.required == 65536 && r.fully_allocated == 10551296);
    t.fmt = INS_MEASURE_VPC;
    t.size = 2041ull << 30;
    CHECK(ins_measure_compute(&t, NULL, &r, err, sizeof(err)) < 0);
}

static int size_of(const char *s, int major, uint64_t *v)
{
    int hex;

    return co_strtosz(s, v, major, &hex);
}

static void test_strtosz(void)
{
    uint64_t v = 0;

    CHECK(size_of("1.5k", 10, &v) == 0 && v == 1536);
    CHECK(size_of("1.5k", 7, &v) == 0 && v == 1536);
    CHECK(size_of("-1", 7, &v) == -EINVAL);
    CHECK(size_of("-1", 10, &v) == -ERANGE);
    CHECK(size_of("0x10k", 10, &v) == -EINVAL);
    CHECK(size_of("0x10k", 7, &v) == 0 && v == 16384);
    CHECK(size_of(".5k", 10, &v) == 0 && v == 512);
    CHECK(size_of(".5k", 7, &v) == -EINVAL);
    CHECK(size_of("16E", 10, &v) == -ERANGE);
    CHECK(size_of("1.5", 10, &v) == -EINVAL);
    CHECK(size_of("1.k", 7, &v) == 0 && v == 1024);
}

static void test_parse(void)
{
    const struct co_format *f = co_find_format("qcow2", 10);
    struct co_opts o;
    struct co_error e;
    struct co_qcow2 q;

    CHECK(f && f->measure);
    CHECK(co_find_format("vmdk", 10) && !co_find_format("vmdk", 10)->measure);
    CHECK(co_find_format("bochs", 10) && !co_find_format("bochs", 10)->desc);
    CHECK(!co_find_format("vhd", 10));

    co_init(&o, f, 10);
    CHECK(co_parse(&o, "cluster_size=4k,nolazy_refcounts,backing_file=a,,b,id=x", &e) == 0);
    CHECK(co_get_uint(&o, "cluster_size", 0) == 4096);
    CHECK(co_get_bool(&o, "lazy_refcounts", 1) == 0);
    CHECK_STR(co_get_str(&o, "backing_file"), "a,b");
    CHECK(co_get(&o, "id") == NULL);
    CHECK(co_parse(&o, "cluster_size=8k", &e) == 0);
    CHECK(co_get_uint(&o, "cluster_size", 0) == 8192);
    CHECK(co_qcow2_params(&o, NULL, NULL, &q, &e) == 0);
    CHECK(q.cluster_size == 8192 && q.version == 3 && q.refcount_bits == 16);
    CHECK(co_parse(&o, "nosuch=1", &e) < 0);
    CHECK_STR(e.msg, "Invalid parameter 'nosuch'");
    CHECK(co_parse(&o, "size", &e) < 0);
    CHECK_STR(e.msg, "Parameter 'size' expects a non-negative number below 2^64");
    CHECK(e.hint[0] != '\0');
    CHECK(co_parse(&o, "refcount_bits=3", &e) == 0);
    CHECK(co_qcow2_params(&o, NULL, NULL, &q, &e) < 0);
    CHECK_STR(e.msg, "Refcount width must be a power of two and may not exceed 64 bits");
    co_free(&o);

    CHECK(co_valid_list("a=b") == 0);
    CHECK(co_valid_list("a=b,,") == 0);
    CHECK(co_valid_list("a=b,") < 0);
    CHECK(co_valid_list(",a") < 0);
    CHECK(co_valid_list("") < 0);
}

int main(void)
{
    test_qcow2();
    test_luks();
    test_bounds();
    test_strtosz();
    test_parse();
    return check_report("test_measure");
}

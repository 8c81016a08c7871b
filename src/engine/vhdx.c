/*
 * vhdx.c - Hyper-V VHDX images.
 *
 * Layout: a 1 MiB header section (file identifier "vhdxfile", two 4 KiB
 * headers at 64 KiB and 128 KiB chosen by sequence number, a region table
 * at 192 KiB), then regions the table names: the BAT and the metadata
 * (block size, virtual size, sector sizes, ...).  Headers, region table
 * and log entries carry CRC-32C checksums.
 *
 * Opening follows qemu's vhdx_open step for step, including its quirks,
 * because `qemu-img info` either prints an image or fails, and we must do
 * the same on the same files.  qemu opens read-only for info, so a log
 * that needs replaying makes the open fail; finding out whether it does
 * means walking the circular log as qemu does.  Opened for writing
 * (check -r) the log is replayed, as qemu does; a safe read-only check
 * opens the image anyway and reports the log.  qemu does not support
 * differencing VHDX files (a parent locator makes the open fail), and has
 * no format-specific info for vhdx.
 *
 * Reading goes further than qemu on purpose: opened to read guest data
 * (INS_O_READ), a differencing image (has_parent, with a parent locator)
 * is accepted and its parent opened through the host's path policy as
 * the backing image.  Its BAT then interleaves sector bitmap entries, and
 * partially present blocks consult the bitmap sector by sector.  `info`
 * keeps qemu's refusal.
 *
 * Unlike qemu we never hold more than a bounded amount of the image in
 * memory: large BATs are streamed, log entries are checked sector by
 * sector, and region overlap checks use a sorted table instead of a list.
 */
#include "engine.h"
#include "fmt_check.h"
#include "vhdx_crc.h"

#include <string.h>

#define KiB 1024u
#define MiB (1024u * 1024u)

#define HEADER1_OFFSET      (64 * KiB)
#define HEADER2_OFFSET      (128 * KiB)
#define REGION_TABLE_OFFSET (192 * KiB)
#define HEADER_SIZE         (4 * KiB)
#define REGION_TABLE_SIZE   (64 * KiB)
#define METADATA_TABLE_SIZE (64 * KiB)
#define HEADER_CMP_SIZE     80      /* the defined part of a header */

#define REGION_MAX_ENTRIES  2047
#define REGION_REQUIRED     0x01
#define META_REQUIRED       0x04

#define PARAMS_HAS_PARENT   0x02
#define BLOCK_SIZE_MIN      (1 * MiB)
#define BLOCK_SIZE_MAX      (256 * MiB)
#define MAX_SECTORS_PER_BLOCK (1u << 23)

#define LOG_SECTOR          4096u
#define LOG_MIN_SIZE        (1 * MiB)
#define LOG_HDR_SIZE        64
#define LOG_DESC_SIZE       32

#define BAT_STATE_MASK      0x07
#define BAT_OFFSET_MASK     0xFFFFFFFFFFF00000ULL
#define PAYLOAD_NOT_PRESENT       0
#define PAYLOAD_UNDEFINED         1
#define PAYLOAD_ZERO              2
#define PAYLOAD_UNMAPPED          3
#define PAYLOAD_UNMAPPED_V095     5
#define PAYLOAD_FULLY_PRESENT     6
#define PAYLOAD_PARTIALLY_PRESENT 7
#define SB_BLOCK_PRESENT          6
#define SECTOR_BITMAP_SIZE        (1 * MiB)

/* Parent locator: bounds on what we are willing to parse. */
#define LOCATOR_MAX_SIZE    (64 * KiB)
#define LOCATOR_HDR_SIZE    20
#define LOCATOR_ENTRY_SIZE  12
#define PARENT_PATH_MAX     4096

/* BATs up to this size stay in memory; larger ones are read on demand. */
#define BAT_CACHE_MAX       (128u << 20)
#define BAT_CHUNK           (64 * KiB)

/* qemu's block layer: requests ending past BDRV_MAX_LENGTH or longer than
 * BDRV_REQUEST_MAX_BYTES fail with EIO; reads past end of file are zeros. */
#define QEMU_MAX_LENGTH     0x7fffffffc0000000ULL
#define QEMU_MAX_REQUEST    0x7ffffe00ULL

/* Metadata items we know (bit in "present"). */
enum {
    META_FILE_PARAMS = 0x01,
    META_VIRTUAL_SIZE = 0x02,
    META_PAGE83 = 0x04,
    META_LOGICAL_SECTOR = 0x08,
    META_PHYS_SECTOR = 0x10,
    META_PARENT_LOCATOR = 0x20,
};
#define META_ALL_PRESENT 0x1f
#define META_PARENT_INDEX 5     /* of the parent locator in meta_items */

/* An MS GUID as stored on disk: three little-endian fields, 8 bytes. */
#define GUID(d1, d2, d3, a, b, c, d, e, f, g, h) {                     \
    (d1) & 0xff, ((d1) >> 8) & 0xff, ((d1) >> 16) & 0xff, (d1) >> 24,   \
    (d2) & 0xff, (d2) >> 8, (d3) & 0xff, (d3) >> 8, a, b, c, d, e, f, g, h }

static const uint8_t bat_guid[16] =
    GUID(0x2dc27766u, 0xf623, 0x4200, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08);
static const uint8_t metadata_guid[16] =
    GUID(0x8b7ca206u, 0x4790, 0x4b9a, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e);
static const uint8_t vhdx_locator_guid[16] =
    GUID(0xb04aefb7u, 0xd19e, 0x4a81, 0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13);

static const struct {
    uint8_t guid[16];
    unsigned bit;
} meta_items[] = {
    { GUID(0xcaa16737u, 0xfa36, 0x4d43, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b),
      META_FILE_PARAMS },
    { GUID(0x2fa54224u, 0xcd1b, 0x4876, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8),
      META_VIRTUAL_SIZE },
    { GUID(0xbeca12abu, 0xb2e6, 0x4523, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46),
      META_PAGE83 },
    { GUID(0x8141bf1du, 0xa96f, 0x4709, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f),
      META_LOGICAL_SECTOR },
    { GUID(0xcda348c7u, 0x445d, 0x4471, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56),
      META_PHYS_SECTOR },
    { GUID(0xa8d35f2du, 0xb30b, 0x454d, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c),
      META_PARENT_LOCATOR },
};

/* CRC-32C (Castagnoli), reflected polynomial 0x82F63B78. */
static const uint32_t crc32c_table[256] = {
    0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c,
    0x26a1e7e8, 0xd4ca64eb, 0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b,
    0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24, 0x105ec76f, 0xe235446c,
    0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
    0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc,
    0xbc267848, 0x4e4dfb4b, 0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a,
    0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35, 0xaa64d611, 0x580f5512,
    0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
    0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad,
    0x1642ae59, 0xe4292d5a, 0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a,
    0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595, 0x417b1dbc, 0xb3109ebf,
    0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
    0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f,
    0xed03a29b, 0x1f682198, 0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927,
    0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38, 0xdbfc821c, 0x2997011f,
    0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
    0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e,
    0x4767748a, 0xb50cf789, 0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859,
    0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46, 0x7198540d, 0x83f3d70e,
    0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
    0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de,
    0xdde0eb2a, 0x2f8b6829, 0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c,
    0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93, 0x082f63b7, 0xfa44e0b4,
    0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
    0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b,
    0xb4091bff, 0x466298fc, 0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c,
    0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033, 0xa24bb5a6, 0x502036a5,
    0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
    0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975,
    0x0e330a81, 0xfc588982, 0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d,
    0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622, 0x38cc2a06, 0xcaa7a905,
    0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
    0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8,
    0xe52cc12c, 0x1747422f, 0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff,
    0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0, 0xd3d3e1ab, 0x21b862a8,
    0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
    0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78,
    0x7fab5e8c, 0x8dc0dd8f, 0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee,
    0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1, 0x69e9f0d5, 0x9b8273d6,
    0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
    0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69,
    0xd5cf889d, 0x27a40b9e, 0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e,
    0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

/* Continues a CRC-32C; start with 0xffffffff and invert at the end. */
static uint32_t crc32c_update(uint32_t crc, const uint8_t *p, size_t n)
{
    while (n--)
        crc = crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

/* The CRC-32C of buf with its 4-byte checksum field at 4 read as zero. */
static uint32_t crc_with_hole(const uint8_t *buf, size_t n)
{
    static const uint8_t zero[4];
    uint32_t crc = crc32c_update(0xffffffffu, buf, 4);

    crc = crc32c_update(crc, zero, 4);
    return ~crc32c_update(crc, buf + 8, n - 8);
}

uint32_t ins_vhdx_checksum(const uint8_t *buf, size_t n)
{
    return crc_with_hole(buf, n);
}

static int checksum_ok(const uint8_t *buf, size_t n)
{
    return crc_with_hole(buf, n) == ins_le32(buf + 4);
}

/* A region of the file that nothing else may overlap. */
struct region {
    uint64_t start, end;        /* end wraps like qemu's start + length */
};

#define MAX_REGIONS (REGION_MAX_ENTRIES + 1)

struct vhdx_image {
    struct ins_image base;
    uint32_t block_size;
    uint64_t chunk_ratio;
    unsigned chunk_ratio_bits;
    uint32_t bat_entries;
    uint64_t bat_offset;
    uint64_t *bat;              /* host order, or NULL: read on demand */
    unsigned open_flags;
    int has_parent;             /* a differencing image (read mode only) */
    char *parent;               /* its parent's name, '/'-separated */
    /* Regions for overlap checks: registration order, then sorted. */
    struct region regions[MAX_REGIONS];
    size_t n_regions;
    uint64_t region_max_end[MAX_REGIONS];
    /* For vhdx_check.c (ins_vhdx_layout). */
    uint64_t log_offset, meta_offset;
    uint32_t log_length, bat_len;
    int log_dirty;              /* check only: a log that needs replaying */
    int log_replayed;           /* opened for writing: the log was replayed */
    int curr_header;            /* 1 or 2: the header in use */
};

static int qemu_pread(struct ins_bdev *f, void *buf, uint64_t len,
                      uint64_t off)
{
    if (len > QEMU_MAX_REQUEST || off > QEMU_MAX_LENGTH ||
        off > QEMU_MAX_LENGTH - len)
        return INS_EIO;
    return ins_read_zfill(f, buf, (size_t)len, off);
}

/* qemu's generic failure: "Could not open 'F': <strerror>". */
static int open_error(struct vhdx_image *s, int err)
{
    const char *why;

    switch (err) {
    case INS_EIO: why = "Input/output error"; break;
    case INS_ENOTSUP: why = "Operation not supported"; break;
    case INS_ENOMEM: why = "Cannot allocate memory"; break;
    case INS_EFBIG: why = "File too large"; break;
    default: why = "Invalid argument"; break;
    }
    return ins_error(s->base.ctx, err, "Could not open '%s': %s",
                     s->base.file->name ? s->base.file->name : "", why);
}

static int vhdx_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                      const uint8_t *head, size_t head_len)
{
    (void)ctx;
    (void)file;
    return head_len >= 8 && memcmp(head, "vhdxfile", 8) == 0 ? 100 : 0;
}

/* ---- regions ---- */

/* qemu's overlap test against every region registered so far. */
static int region_overlaps(const struct vhdx_image *s, uint64_t start,
                           uint64_t length)
{
    uint64_t end = start + length;
    size_t i;

    for (i = 0; i < s->n_regions; i++)
        if (!(start >= s->regions[i].end || end <= s->regions[i].start))
            return 1;
    return 0;
}

static void region_add(struct vhdx_image *s, uint64_t start, uint64_t length)
{
    s->regions[s->n_regions].start = start;
    s->regions[s->n_regions].end = start + length;
    s->n_regions++;
}

/*
 * The overlap test is "some region has start < end' and end > start'",
 * so after sorting by start, a prefix maximum of the ends answers it with
 * one binary search (the BAT check asks once per payload block).
 */
static void regions_sort(struct vhdx_image *s)
{
    size_t i, j;

    for (i = 1; i < s->n_regions; i++) {
        struct region r = s->regions[i];

        for (j = i; j > 0 && s->regions[j - 1].start > r.start; j--)
            s->regions[j] = s->regions[j - 1];
        s->regions[j] = r;
    }
    for (i = 0; i < s->n_regions; i++) {
        uint64_t e = s->regions[i].end;

        s->region_max_end[i] = i && s->region_max_end[i - 1] > e ?
                               s->region_max_end[i - 1] : e;
    }
}

static int regions_sorted_overlap(const struct vhdx_image *s, uint64_t start,
                                  uint64_t length)
{
    uint64_t end = start + length;
    size_t lo = 0, hi = s->n_regions;

    /* lo = number of regions whose start is below end. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (s->regions[mid].start < end)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && s->region_max_end[lo - 1] > start;
}

/* ---- headers ---- */

static int header_valid(const uint8_t *h)
{
    return checksum_ok(h, HEADER_SIZE) && memcmp(h, "head", 4) == 0 &&
           ins_le16(h + 66) == 1;
}

/* Picks the current header as qemu does; copies it to cur. */
static int parse_headers(struct vhdx_image *s, uint8_t *cur)
{
    struct ins_ctx *ctx = s->base.ctx;
    uint8_t *h1 = ins_malloc(ctx, 2 * HEADER_SIZE), *h2;
    int v1, v2, which, rc = INS_OK;

    if (!h1)
        return open_error(s, INS_ENOMEM);
    h2 = h1 + HEADER_SIZE;
    ins_read_zfill(s->base.file, h1, HEADER_SIZE, HEADER1_OFFSET);
    ins_read_zfill(s->base.file, h2, HEADER_SIZE, HEADER2_OFFSET);
    v1 = header_valid(h1);
    v2 = header_valid(h2);
    if (v1 && v2) {
        uint64_t q1 = ins_le64(h1 + 8), q2 = ins_le64(h2 + 8);

        /* Equal sequence numbers are only fine for identical headers
         * (Disk2VHD writes those). */
        if (q1 != q2)
            which = q1 > q2 ? 1 : 2;
        else
            which = memcmp(h1, h2, HEADER_CMP_SIZE) == 0 ? 1 : 0;
    } else {
        which = v1 ? 1 : v2 ? 2 : 0;
    }
    if (which == 0)
        rc = ins_error(ctx, INS_EINVAL, "No valid VHDX header found");
    else
        memcpy(cur, which == 1 ? h1 : h2, HEADER_CMP_SIZE);
    s->curr_header = which;
    ins_free(ctx, h1);
    return rc;
}

/* ---- the log ---- */

struct vlog {
    struct ins_bdev *file;
    uint64_t offset;
    uint32_t length;
    uint32_t read;              /* the search treats the log as full */
    const uint8_t *guid;        /* the current header's log GUID */
    uint64_t budget;            /* bytes we are still willing to read */
    /* The sequence qemu would replay: the valid run of entries whose
     * first entry has the highest sequence number. */
    int best_valid;
    uint32_t best_start, best_end, best_count;
    uint64_t best_seq;
};

static uint32_t log_next(uint32_t idx, uint32_t length)
{
    idx += LOG_SECTOR;
    return idx >= length ? 0 : idx;
}

static int log_pread(struct vlog *log, void *buf, uint32_t len, uint32_t at)
{
    if (log->budget < len)
        return INS_EFBIG;
    log->budget -= len;
    if (log->offset > UINT64_MAX - at)
        return INS_EIO;
    return qemu_pread(log->file, buf, len, log->offset + at);
}

static int log_read_sector(struct vlog *log, uint8_t *buf)
{
    int rc = log_pread(log, buf, LOG_SECTOR, log->read);

    log->read = log_next(log->read, log->length);
    return rc;
}

static int log_hdr_valid(const struct vlog *log, const uint8_t *h)
{
    uint32_t entry_length = ins_le32(h + 8);

    return memcmp(h, "loge", 4) == 0 && entry_length <= log->length &&
           entry_length % LOG_SECTOR == 0 && ins_le64(h + 16) != 0 &&
           memcmp(h + 32, log->guid, 16) == 0 &&
           (uint64_t)ins_le32(h + 24) * LOG_DESC_SIZE <= entry_length;
}

static int log_desc_valid(const uint8_t *d, uint64_t seq)
{
    if (ins_le64(d + 24) != seq || ins_le64(d + 16) % LOG_SECTOR)
        return 0;
    if (memcmp(d, "zero", 4) == 0)
        return ins_le64(d + 8) % LOG_SECTOR == 0;
    return memcmp(d, "desc", 4) == 0;
}

/*
 * qemu's vhdx_validate_log_entry: checks the entry at log->read and moves
 * past it.  A valid header with a bad descriptor is an error (the whole
 * open fails), a bad checksum only makes the entry invalid.
 */
static int log_validate_entry(struct vlog *log, uint64_t seq, int *valid,
                              uint64_t *entry_seq, uint8_t *sector)
{
    uint8_t hdr[LOG_HDR_SIZE];
    uint32_t count, desc_sectors, total, k, i;
    uint64_t hseq;
    uint32_t crc = 0xffffffffu;
    int bad_desc = 0, rc;

    *valid = 0;
    rc = log_pread(log, hdr, sizeof(hdr), log->read);
    if (rc < 0 || !log_hdr_valid(log, hdr) ||
        (seq > 0 && ins_le64(hdr + 16) != seq + 1)) {
        log->read = log_next(log->read, log->length);
        return rc < 0 ? rc : INS_OK;
    }
    hseq = ins_le64(hdr + 16);
    count = ins_le32(hdr + 24);
    /* The header takes the first two descriptor slots. */
    desc_sectors = (count + 2) / 128 + ((count + 2) % 128 ? 1 : 0);
    total = ins_le32(hdr + 8) / LOG_SECTOR;

    /*
     * qemu reads every descriptor sector into the first sector of its
     * buffer, so with more than one (over 126 descriptors) the others are
     * uninitialised memory and can never hold valid descriptors for this
     * entry: such an entry always fails the open.  With one sector the
     * descriptors are the ones on disk.
     */
    for (k = 0; k < desc_sectors; k++) {
        rc = log_read_sector(log, sector);
        if (rc < 0)
            return rc;
        if (desc_sectors > 1)
            continue;
        memset(sector + 4, 0, 4);       /* the checksum field */
        /* Descriptor i sits in slot i + 2, after the header. */
        for (i = 0; i < count; i++)
            if (!log_desc_valid(sector + (i + 2) * LOG_DESC_SIZE, hseq))
                bad_desc = 1;
        crc = crc32c_update(crc, sector, LOG_SECTOR);
    }
    if (bad_desc || desc_sectors > 1)
        return INS_EINVAL;
    for (k = desc_sectors; k < total; k++) {
        rc = log_read_sector(log, sector);
        if (rc < 0)
            return rc;
        crc = crc32c_update(crc, sector, LOG_SECTOR);
    }
    if (~crc == ins_le32(hdr + 4)) {
        *valid = 1;
        *entry_seq = hseq;
    }
    return INS_OK;
}

/*
 * qemu's vhdx_log_search, reduced to its outcome: whether any valid
 * entry sequence exists.  The walk itself must be the same, because an
 * error anywhere in it fails the open.  qemu's walk can loop forever on a
 * crafted log (an outer pass that ends where it began); the walk is a
 * function of where a pass starts, so a start seen twice means qemu never
 * finishes, and we fail instead.
 */
static int log_search(struct vhdx_image *s, struct vlog *log, int *found)
{
    struct ins_ctx *ctx = s->base.ctx;
    uint32_t nsect = log->length / LOG_SECTOR;
    uint8_t *seen = ins_calloc(ctx, nsect / 8 + 1, 1);
    uint8_t *sector = ins_malloc(ctx, LOG_SECTOR);
    int rc = INS_OK;

    *found = 0;
    if (!seen || !sector) {
        rc = INS_ENOMEM;
        goto out;
    }
    log->read = 0;
    for (;;) {
        uint32_t tail = log->read, t = tail / LOG_SECTOR;
        uint64_t cur_seq = 0, eseq = 0;
        int valid;

        if (seen[t / 8] & (1u << (t % 8))) {
            rc = INS_EFBIG;
            goto out;
        }
        seen[t / 8] |= (uint8_t)(1u << (t % 8));
        rc = log_validate_entry(log, cur_seq, &valid, &eseq, sector);
        if (rc < 0)
            goto out;
        if (valid) {
            uint32_t count = 1, end = log->read;
            uint64_t first = eseq;

            *found = 1;
            /* qemu checks the next entry before it first sets cur_seq. */
            for (;;) {
                rc = log_validate_entry(log, cur_seq, &valid, &eseq, sector);
                if (rc < 0)
                    goto out;
                if (!valid)
                    break;
                cur_seq = eseq;
                count++;
                end = log->read;
            }
            if (!log->best_valid || first > log->best_seq) {
                log->best_valid = 1;
                log->best_seq = first;
                log->best_start = tail;
                log->best_end = end;
                log->best_count = count;
            }
        }
        if (log->read < tail)
            break;
    }
out:
    ins_free(ctx, seen);
    ins_free(ctx, sector);
    return rc;
}

/*
 * Replaying the log (qemu's vhdx_log_flush, when the image is opened for
 * writing: check -r).  Entries are applied in order: a data descriptor
 * writes one 4 KiB sector (its first 8 and last 4 bytes live in the
 * descriptor), a zero descriptor writes zeros.  Then, after a flush, both
 * headers are rewritten with an empty log GUID.  Until that last step the
 * log stays valid, so an interrupted replay is simply done again.
 */

/* Reads the next sector of the sequence; 0 sectors once it is used up
 * (qemu's vhdx_log_read_sectors). */
static int replay_read(struct vlog *log, uint8_t *buf, uint32_t end, int *got)
{
    *got = 0;
    if (log->read == end)
        return INS_OK;
    *got = 1;
    return log_read_sector(log, buf);
}

/* Zeros over [off, off + len), growing the file as writing would. */
static int replay_zero(struct ins_bdev *f, uint64_t off, uint64_t len)
{
    uint64_t old = f->size;
    int rc;

    if (off + len > old && (rc = ins_truncate(f, off + len)) < 0)
        return rc;
    if (off < old)
        return ins_zero_range(f, off, (off + len < old ? off + len : old) - off);
    return INS_OK;
}

static int replay_entry(struct vhdx_image *s, struct vlog *log, uint32_t end,
                        uint8_t *desc, uint8_t *data)
{
    struct ins_bdev *f = s->base.file;
    uint8_t hdr[LOG_HDR_SIZE];
    uint64_t flen = (f->size + 511) & ~(uint64_t)511, seq;
    uint32_t count, i;
    int got, rc;

    /* vhdx_log_peek_hdr, then vhdx_log_read_desc. */
    if ((uint64_t)log->read + LOG_HDR_SIZE > log->length ||
        log_pread(log, hdr, LOG_HDR_SIZE, log->read) < 0 ||
        !log_hdr_valid(log, hdr))
        return INS_EINVAL;
    if (ins_le64(hdr + 48) > flen)       /* flushed_file_offset */
        return INS_EINVAL;
    seq = ins_le64(hdr + 16);
    count = ins_le32(hdr + 24);
    if (count + 2 > LOG_SECTOR / LOG_DESC_SIZE)
        return INS_EINVAL;              /* the search refused these */
    if ((rc = replay_read(log, desc, end, &got)) < 0 || !got)
        return rc < 0 ? rc : INS_EINVAL;
    for (i = 0; i < count; i++)
        if (!log_desc_valid(desc + (i + 2) * LOG_DESC_SIZE, seq))
            return INS_EINVAL;
    for (i = 0; i < count; i++) {
        const uint8_t *d = desc + (i + 2) * LOG_DESC_SIZE;
        uint64_t off = ins_le64(d + 16), n = 1;

        if (memcmp(d, "desc", 4) == 0) {
            if ((rc = replay_read(log, data, end, &got)) < 0 || !got)
                return rc < 0 ? rc : INS_EINVAL;
            if (((uint64_t)ins_le32(data + 4) << 32 | ins_le32(data + 4092)) != seq)
                return INS_EINVAL;
            memcpy(data, d + 8, 8);             /* leading bytes */
            memcpy(data + 4092, d + 4, 4);      /* trailing bytes */
        } else {
            n = ins_le64(d + 8) / LOG_SECTOR;
            memset(data, 0, LOG_SECTOR);
        }
        if (n > (QEMU_MAX_LENGTH - LOG_SECTOR) / LOG_SECTOR ||
            off > QEMU_MAX_LENGTH - n * LOG_SECTOR)
            return INS_EINVAL;
        if (memcmp(d, "desc", 4) == 0)
            rc = ins_write(f, data, LOG_SECTOR, off);
        else
            rc = replay_zero(f, off, n * LOG_SECTOR);
        if (rc < 0 || (rc = ins_flush(f)) < 0)
            return rc;
        if (flen < off && off % MiB) {
            uint64_t size = (off + MiB - 1) / MiB * MiB;

            if ((rc = ins_truncate(f, size)) < 0)
                return rc;
        }
    }
    return INS_OK;
}

/* vhdx_update_header: the other slot gets the current header with the
 * next sequence number and an empty log GUID, and becomes current.
 * (qemu also gives it a fresh file write GUID; we have no randomness.) */
static int replay_update_header(struct vhdx_image *s, uint8_t *buf)
{
    uint64_t cur = s->curr_header == 2 ? HEADER2_OFFSET : HEADER1_OFFSET;
    uint64_t other = s->curr_header == 2 ? HEADER1_OFFSET : HEADER2_OFFSET;
    uint64_t seq;
    uint32_t crc;
    int k, rc;

    if ((rc = ins_read(s->base.file, buf, HEADER_SIZE, cur)) < 0)
        return rc;
    seq = ins_le64(buf + 8) + 1;
    for (k = 0; k < 8; k++)
        buf[8 + k] = (uint8_t)(seq >> (8 * k));
    memset(buf + 48, 0, 16);                    /* log GUID */
    crc = crc_with_hole(buf, HEADER_SIZE);
    for (k = 0; k < 4; k++)
        buf[4 + k] = (uint8_t)(crc >> (8 * k));
    if ((rc = ins_write(s->base.file, buf, HEADER_SIZE, other)) < 0 ||
        (rc = ins_flush(s->base.file)) < 0)
        return rc;
    s->curr_header = s->curr_header == 2 ? 1 : 2;
    return INS_OK;
}

static int replay_log(struct vhdx_image *s, struct vlog *log)
{
    struct ins_ctx *ctx = s->base.ctx;
    uint8_t *buf = ins_malloc(ctx, 2 * LOG_SECTOR);
    uint32_t n;
    int rc = INS_OK;

    if (!buf)
        return open_error(s, INS_ENOMEM);
    log->read = log->best_start;
    log->budget = 2 * (uint64_t)log->length + 64 * MiB;
    for (n = 0; n < log->best_count && rc == INS_OK; n++)
        rc = replay_entry(s, log, log->best_end, buf, buf + LOG_SECTOR);
    if (rc == INS_OK)
        rc = ins_flush(s->base.file);
    if (rc == INS_OK)
        rc = replay_update_header(s, buf);
    if (rc == INS_OK)
        rc = replay_update_header(s, buf);
    ins_free(ctx, buf);
    if (rc < 0)
        return open_error(s, rc == INS_ENOTSUP ? INS_EIO : rc);
    s->log_replayed = 1;
    return INS_OK;
}

static int parse_log(struct vhdx_image *s, const uint8_t *hdr)
{
    static const uint8_t zero_guid[16];
    uint64_t log_offset = ins_le64(hdr + 72);
    uint32_t log_length = ins_le32(hdr + 68);
    struct vlog log;
    int found, rc;

    if (log_offset < LOG_MIN_SIZE || log_offset % LOG_MIN_SIZE ||
        ins_le16(hdr + 64) != 0)
        return open_error(s, INS_EINVAL);
    if (memcmp(hdr + 48, zero_guid, 16) == 0 || log_length == 0)
        return INS_OK;
    if (log_length % LOG_MIN_SIZE)
        return open_error(s, INS_EINVAL);

    memset(&log, 0, sizeof(log));
    log.file = s->base.file;
    log.offset = log_offset;
    log.length = log_length;
    log.guid = hdr + 48;
    log.budget = 2 * (uint64_t)log_length + 64 * MiB;
    rc = log_search(s, &log, &found);
    if (rc == INS_EFBIG)
        return ins_error(s->base.ctx, INS_EFBIG, "VHDX log of '%s' cannot be "
                         "searched: its entries loop or are too many (qemu-img "
                         "may never finish on this image)",
                         s->base.file->name ? s->base.file->name : "");
    if (rc < 0)
        return open_error(s, rc);
    /* Opened for writing (check -r): replay it, as qemu does. */
    if (found && (s->open_flags & INS_O_WRITE))
        return replay_log(s, &log);
    /* A safe read-only check reports the log instead of failing. */
    if (found && (s->open_flags & (INS_O_CHECK | INS_O_WRITE)) == INS_O_CHECK &&
        !(s->base.ctx->flags & INS_F_UNSAFE_QUIRKS)) {
        s->log_dirty = 1;
        return INS_OK;
    }
    if (found)
        return ins_error(s->base.ctx, INS_EINVAL, "VHDX image file '%s' opened "
                         "read-only, but contains a log that needs to be replayed",
                         s->base.file->name ? s->base.file->name : "");
    return INS_OK;
}

/* ---- region table and metadata ---- */

struct meta {
    uint64_t region_offset;
    uint32_t item_offset[6];
    uint32_t item_length[6];
    unsigned present;
};

static int parse_region_table(struct vhdx_image *s, uint64_t *bat_off,
                              uint32_t *bat_len, uint64_t *meta_off)
{
    struct ins_ctx *ctx = s->base.ctx;
    uint8_t *buf = ins_malloc(ctx, REGION_TABLE_SIZE);
    int bat_found = 0, meta_found = 0, rc = INS_OK;
    uint32_t count, i;

    if (!buf)
        return open_error(s, INS_ENOMEM);
    ins_read_zfill(s->base.file, buf, REGION_TABLE_SIZE, REGION_TABLE_OFFSET);
    count = ins_le32(buf + 8);
    if (!checksum_ok(buf, REGION_TABLE_SIZE) || memcmp(buf, "regi", 4) != 0 ||
        count > REGION_MAX_ENTRIES) {
        rc = open_error(s, INS_EINVAL);
        goto out;
    }
    for (i = 0; i < count; i++) {
        const uint8_t *e = buf + 16 + 32 * i;
        uint64_t off = ins_le64(e + 16);
        uint32_t len = ins_le32(e + 24);

        if (region_overlaps(s, off, len)) {
            rc = open_error(s, INS_EINVAL);
            goto out;
        }
        region_add(s, off, len);
        if (memcmp(e, bat_guid, 16) == 0) {
            if (bat_found++) {
                rc = open_error(s, INS_EINVAL);
                goto out;
            }
            *bat_off = off;
            *bat_len = len;
        } else if (memcmp(e, metadata_guid, 16) == 0) {
            if (meta_found++) {
                rc = open_error(s, INS_EINVAL);
                goto out;
            }
            *meta_off = off;
        } else if (ins_le32(e + 28) & REGION_REQUIRED) {
            rc = open_error(s, INS_ENOTSUP);
            goto out;
        }
    }
    if (!bat_found || !meta_found)
        rc = open_error(s, INS_EINVAL);
out:
    ins_free(ctx, buf);
    return rc;
}

static int parse_metadata_table(struct vhdx_image *s, struct meta *m)
{
    struct ins_ctx *ctx = s->base.ctx;
    uint8_t *buf = ins_malloc(ctx, METADATA_TABLE_SIZE);
    uint32_t count, i;
    size_t k;
    int rc = INS_OK;

    if (!buf)
        return open_error(s, INS_ENOMEM);
    if (qemu_pread(s->base.file, buf, METADATA_TABLE_SIZE, m->region_offset) < 0) {
        rc = open_error(s, INS_EIO);
        goto out;
    }
    count = ins_le16(buf + 10);
    if (memcmp(buf, "metadata", 8) != 0 ||
        (uint64_t)count * 32 > METADATA_TABLE_SIZE - 32) {
        rc = open_error(s, INS_EINVAL);
        goto out;
    }
    for (i = 0; i < count; i++) {
        const uint8_t *e = buf + 32 + 32 * i;

        for (k = 0; k < sizeof(meta_items) / sizeof(meta_items[0]); k++)
            if (memcmp(e, meta_items[k].guid, 16) == 0)
                break;
        if (k < sizeof(meta_items) / sizeof(meta_items[0])) {
            if (m->present & meta_items[k].bit) {
                rc = open_error(s, INS_EINVAL);
                goto out;
            }
            m->present |= meta_items[k].bit;
            m->item_offset[k] = ins_le32(e + 16);
            m->item_length[k] = ins_le32(e + 20);
        } else if (ins_le32(e + 24) & META_REQUIRED) {
            rc = open_error(s, INS_ENOTSUP);
            goto out;
        }
    }
    /* A parent locator counts against "all present": qemu cannot open
     * differencing files.  We read them (see the top of the file). */
    if (m->present != META_ALL_PRESENT &&
        !((s->open_flags & INS_O_READ) &&
          !((s->open_flags & INS_O_CHECK) &&
            (ctx->flags & INS_F_UNSAFE_QUIRKS)) &&
          m->present == (META_ALL_PRESENT | META_PARENT_LOCATOR)))
        rc = open_error(s, INS_ENOTSUP);
out:
    ins_free(ctx, buf);
    return rc;
}

/* Reads a metadata item (index into meta_items) of n bytes. */
static int read_item(struct vhdx_image *s, const struct meta *m, size_t k,
                     uint8_t *buf, size_t n)
{
    if (qemu_pread(s->base.file, buf, n, m->region_offset + m->item_offset[k]) < 0)
        return open_error(s, INS_EIO);
    return INS_OK;
}

/* ---- the parent locator (differencing images, read mode only) ---- */

static int locator_error(struct vhdx_image *s, const char *why)
{
    return ins_error(s->base.ctx, INS_EINVAL, "VHDX parent locator of '%s' "
                     "is invalid: %s",
                     s->base.file->name ? s->base.file->name : "", why);
}

/* Appends code point c as UTF-8; 0 if it does not fit in out[cap]. */
static int utf8_put(char *out, size_t cap, size_t *n, uint32_t c)
{
    uint8_t b[4];
    size_t k, len;

    if (c < 0x80) {
        b[0] = (uint8_t)c;
        len = 1;
    } else if (c < 0x800) {
        b[0] = (uint8_t)(0xc0 | (c >> 6));
        b[1] = (uint8_t)(0x80 | (c & 0x3f));
        len = 2;
    } else if (c < 0x10000) {
        b[0] = (uint8_t)(0xe0 | (c >> 12));
        b[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3f));
        b[2] = (uint8_t)(0x80 | (c & 0x3f));
        len = 3;
    } else {
        b[0] = (uint8_t)(0xf0 | (c >> 18));
        b[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3f));
        b[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3f));
        b[3] = (uint8_t)(0x80 | (c & 0x3f));
        len = 4;
    }
    if (*n + len >= cap)
        return 0;
    for (k = 0; k < len; k++)
        out[(*n)++] = (char)b[k];
    return 1;
}

/*
 * UTF-16LE (n bytes) to a NUL-terminated UTF-8 path with '/' separators.
 * Returns 0 on NULs, unpaired surrogates or a result that does not fit.
 */
static int utf16_path(const uint8_t *in, size_t n, char *out, size_t cap)
{
    size_t i = 0, o = 0;

    if (n % 2)
        return 0;
    while (i < n) {
        uint32_t c = ins_le16(in + i);

        i += 2;
        if (c >= 0xd800 && c < 0xdc00) {
            uint32_t lo;

            if (i >= n)
                return 0;
            lo = ins_le16(in + i);
            if (lo < 0xdc00 || lo >= 0xe000)
                return 0;
            i += 2;
            c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
        } else if ((c >= 0xdc00 && c < 0xe000) || c == 0) {
            return 0;
        }
        if (c == '\\')
            c = '/';
        if (!utf8_put(out, cap, &o, c))
            return 0;
    }
    out[o] = '\0';
    return 1;
}

/* True if the UTF-16LE key of n bytes is the ASCII string want. */
static int key_is(const uint8_t *key, size_t n, const char *want)
{
    size_t i, len = strlen(want);

    if (n != 2 * len)
        return 0;
    for (i = 0; i < len; i++)
        if (ins_le16(key + 2 * i) != (uint8_t)want[i])
            return 0;
    return 1;
}

/*
 * Reads the parent locator item and keeps the parent's name:
 * relative_path if there is one, else absolute_win32_path.
 */
static int parse_parent_locator(struct vhdx_image *s, const struct meta *m)
{
    static const char *const keys[] = { "relative_path", "absolute_win32_path" };
    struct ins_ctx *ctx = s->base.ctx;
    uint32_t len = m->item_length[META_PARENT_INDEX], count, i;
    uint8_t *buf;
    char *path = NULL;
    int found[2] = { 0, 0 }, rc = INS_OK;
    uint32_t val_off[2] = { 0, 0 }, val_len[2] = { 0, 0 };
    size_t k;
    const char *p;

    if (len < LOCATOR_HDR_SIZE || len > LOCATOR_MAX_SIZE)
        return locator_error(s, "bad size");
    buf = ins_malloc(ctx, len);
    if (!buf)
        return open_error(s, INS_ENOMEM);
    if (read_item(s, m, META_PARENT_INDEX, buf, len) < 0) {
        rc = INS_EIO;
        goto out;
    }
    if (memcmp(buf, vhdx_locator_guid, 16) != 0) {
        rc = locator_error(s, "unknown locator type");
        goto out;
    }
    count = ins_le16(buf + 18);
    if (count > (len - LOCATOR_HDR_SIZE) / LOCATOR_ENTRY_SIZE) {
        rc = locator_error(s, "too many entries");
        goto out;
    }
    for (i = 0; i < count; i++) {
        const uint8_t *e = buf + LOCATOR_HDR_SIZE + LOCATOR_ENTRY_SIZE * i;
        uint32_t ko = ins_le32(e), vo = ins_le32(e + 4);
        uint32_t kl = ins_le16(e + 8), vl = ins_le16(e + 10);

        if (ko > len || kl > len - ko || vo > len || vl > len - vo) {
            rc = locator_error(s, "entry outside the locator");
            goto out;
        }
        for (k = 0; k < 2; k++) {
            if (key_is(buf + ko, kl, keys[k])) {
                found[k] = 1;
                val_off[k] = vo;
                val_len[k] = vl;
            }
        }
    }
    k = found[0] ? 0 : found[1] ? 1 : 2;
    if (k == 2) {
        rc = locator_error(s, "no relative_path or absolute_win32_path");
        goto out;
    }
    path = ins_malloc(ctx, PARENT_PATH_MAX);
    if (!path) {
        rc = open_error(s, INS_ENOMEM);
        goto out;
    }
    if (!utf16_path(buf + val_off[k], val_len[k], path, PARENT_PATH_MAX)) {
        rc = locator_error(s, "bad parent path");
        goto out;
    }
    for (p = path; p[0] == '.' && p[1] == '/'; p += 2)
        ;
    if (!*p) {
        rc = locator_error(s, "empty parent path");
        goto out;
    }
    s->parent = ins_strdup(ctx, p);
    if (!s->parent)
        rc = open_error(s, INS_ENOMEM);
out:
    ins_free(ctx, path);
    ins_free(ctx, buf);
    return rc;
}

static unsigned log2_u64(uint64_t v)
{
    unsigned n = 0;

    while (v > 1) {
        v >>= 1;
        n++;
    }
    return n;
}

static int parse_metadata(struct vhdx_image *s, uint64_t meta_off,
                          uint64_t *disk_size)
{
    struct meta m;
    uint8_t params[8], vsize[8], lss[4], pss[4];
    uint32_t block_size, flags;
    int rc;

    memset(&m, 0, sizeof(m));
    m.region_offset = meta_off;
    rc = parse_metadata_table(s, &m);
    if (rc < 0)
        return rc;
    rc = read_item(s, &m, 0, params, sizeof(params));
    if (rc < 0)
        return rc;
    block_size = ins_le32(params);
    flags = ins_le32(params + 4);
    /* has_parent with no parent locator (one would have failed above,
     * except in read mode), and a locator without has_parent, fail as in
     * qemu. */
    if ((flags & PARAMS_HAS_PARENT) && !(m.present & META_PARENT_LOCATOR))
        return open_error(s, INS_EINVAL);
    if (!(flags & PARAMS_HAS_PARENT) && (m.present & META_PARENT_LOCATOR))
        return open_error(s, INS_ENOTSUP);
    if ((rc = read_item(s, &m, 1, vsize, sizeof(vsize))) < 0 ||
        (rc = read_item(s, &m, 3, lss, sizeof(lss))) < 0 ||
        (rc = read_item(s, &m, 4, pss, sizeof(pss))) < 0)
        return rc;
    if (block_size < BLOCK_SIZE_MIN || block_size > BLOCK_SIZE_MAX)
        return open_error(s, INS_EINVAL);
    if (ins_le32(lss) != 512)
        return open_error(s, INS_ENOTSUP);
    /* With 512-byte sectors and a block size in range, these all come
     * down to the block size being a power of two. */
    if (block_size & (block_size - 1))
        return open_error(s, INS_EINVAL);
    if (flags & PARAMS_HAS_PARENT) {
        rc = parse_parent_locator(s, &m);
        if (rc < 0)
            return rc;
        s->has_parent = 1;
    }
    s->block_size = block_size;
    s->chunk_ratio = (uint64_t)MAX_SECTORS_PER_BLOCK * 512 / block_size;
    s->chunk_ratio_bits = log2_u64(s->chunk_ratio);
    *disk_size = ins_le64(vsize);
    return INS_OK;
}

/* ---- the BAT ---- */

static int bat_get(struct vhdx_image *s, uint64_t i, uint64_t *e)
{
    uint8_t b[8];

    if (s->bat) {
        *e = s->bat[i];
        return INS_OK;
    }
    if (ins_read_zfill(s->base.file, b, 8, s->bat_offset + i * 8) < 0)
        return INS_EIO;
    *e = ins_le64(b);
    return INS_OK;
}

/*
 * Differencing images (our own rules; qemu cannot open them): every
 * present payload block and sector bitmap must lie inside the file and
 * outside the headers, log and regions; states must be known ones.
 */
static int check_diff_bat_entry(struct vhdx_image *s, uint64_t i, uint64_t e,
                                uint64_t fsize)
{
    unsigned state = (unsigned)(e & BAT_STATE_MASK);
    uint64_t offset = e & BAT_OFFSET_MASK, length;

    if ((i + 1) % (s->chunk_ratio + 1) == 0) {
        /* A sector bitmap entry. */
        if (state == 0)
            return INS_OK;
        if (state != SB_BLOCK_PRESENT)
            return INS_EINVAL;
        length = SECTOR_BITMAP_SIZE;
    } else {
        switch (state) {
        case PAYLOAD_NOT_PRESENT:
        case PAYLOAD_UNDEFINED:
        case PAYLOAD_ZERO:
        case PAYLOAD_UNMAPPED:
        case PAYLOAD_UNMAPPED_V095:
            return INS_OK;
        case PAYLOAD_FULLY_PRESENT:
        case PAYLOAD_PARTIALLY_PRESENT:
            length = s->block_size;
            break;
        default:
            return INS_EINVAL;
        }
    }
    if (offset < MiB || offset > fsize || length > fsize - offset ||
        regions_sorted_overlap(s, offset, length))
        return INS_EINVAL;
    return INS_OK;
}

/*
 * qemu's vhdx_check_bat_entries: present blocks must lie inside the file,
 * and payload blocks must not overlap the log or a region.  qemu's counter
 * of payload blocks between sector-bitmap entries only advances on
 * present entries; we keep that.
 */
static int check_bat_entry(struct vhdx_image *s, uint64_t i, uint64_t e,
                           uint64_t disk_bytes, uint64_t *payblocks)
{
    /* qemu's file length counts whole 512-byte sectors. */
    uint64_t fsize = (s->base.file->size + 511) & ~(uint64_t)511, offset, rest;
    uint32_t block_length;

    if (s->has_parent)
        return check_diff_bat_entry(s, i, e, fsize);
    if ((e & BAT_STATE_MASK) != PAYLOAD_FULLY_PRESENT)
        return INS_OK;
    offset = e & BAT_OFFSET_MASK;
    rest = disk_bytes - i * s->block_size;
    block_length = rest < s->block_size ? (uint32_t)rest : s->block_size;
    if (offset > (uint64_t)INT64_MAX - s->block_size || offset >= fsize ||
        offset + block_length > fsize)
        return INS_EINVAL;
    if ((*payblocks)--) {
        if (regions_sorted_overlap(s, offset, s->block_size))
            return INS_EINVAL;
    } else {
        *payblocks = s->chunk_ratio;
    }
    return INS_OK;
}

static int load_bat(struct vhdx_image *s, uint32_t bat_len, uint64_t disk_bytes)
{
    struct ins_ctx *ctx = s->base.ctx;
    uint64_t size = (uint64_t)s->bat_entries * 8, done, payblocks = s->chunk_ratio;
    uint8_t *chunk;
    int rc = INS_OK;

    /* qemu reads the whole region in one request. */
    if (bat_len > QEMU_MAX_REQUEST || s->bat_offset > QEMU_MAX_LENGTH ||
        s->bat_offset > QEMU_MAX_LENGTH - bat_len)
        return open_error(s, INS_EIO);
    if (size <= BAT_CACHE_MAX) {
        s->bat = ins_malloc(ctx, size ? (size_t)size : 1);
        if (!s->bat)
            return open_error(s, INS_ENOMEM);
    }
    chunk = ins_malloc(ctx, BAT_CHUNK);
    if (!chunk)
        return open_error(s, INS_ENOMEM);
    regions_sort(s);
    for (done = 0; done < size && rc == INS_OK; done += BAT_CHUNK) {
        size_t n = size - done < BAT_CHUNK ? (size_t)(size - done) : BAT_CHUNK, j;

        if (ins_read_zfill(s->base.file, chunk, n, s->bat_offset + done) < 0) {
            rc = open_error(s, INS_EIO);
            break;
        }
        for (j = 0; j < n; j += 8) {
            uint64_t i = (done + j) / 8, e = ins_le64(chunk + j);

            if (s->bat)
                s->bat[i] = e;
            /* qemu leaves these to the check (BDRV_O_CHECK). */
            if (!((s->open_flags & INS_O_CHECK) && !s->has_parent) &&
                check_bat_entry(s, i, e, disk_bytes, &payblocks) < 0) {
                rc = open_error(s, INS_EINVAL);
                break;
            }
        }
    }
    ins_free(ctx, chunk);
    return rc;
}

/* ---- open, info, read ---- */

static void vhdx_close(struct ins_image *img)
{
    struct vhdx_image *s = (struct vhdx_image *)img;

    if (!s)
        return;
    ins_free(img->ctx, s->bat);
    ins_free(img->ctx, s->parent);
    ins_free(img->ctx, s);
}

static int vhdx_open(struct ins_ctx *ctx, struct ins_bdev *file,
                     unsigned flags, struct ins_image **out)
{
    struct vhdx_image *s = ins_calloc(ctx, 1, sizeof(*s));
    uint8_t sig[8], hdr[HEADER_CMP_SIZE];
    uint64_t meta_off = 0, disk_size = 0, data_blocks, disk_bytes;
    uint32_t bat_len = 0, nblocks;
    int rc;

    if (!s)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    s->open_flags = flags;
    s->base.drv = &ins_drv_vhdx;
    s->base.ctx = ctx;
    s->base.file = file;

    ins_read_zfill(file, sig, sizeof(sig), 0);
    if (memcmp(sig, "vhdxfile", 8) != 0) {
        rc = open_error(s, INS_EINVAL);
        goto fail;
    }
    if ((rc = parse_headers(s, hdr)) < 0)
        goto fail;
    region_add(s, ins_le64(hdr + 72), ins_le32(hdr + 68));
    s->log_offset = ins_le64(hdr + 72);
    s->log_length = ins_le32(hdr + 68);
    if ((rc = parse_log(s, hdr)) < 0 ||
        (rc = parse_region_table(s, &s->bat_offset, &bat_len, &meta_off)) < 0)
        goto fail;
    if ((rc = parse_metadata(s, meta_off, &disk_size)) < 0)
        goto fail;
    s->meta_offset = meta_off;
    s->bat_len = bat_len;

    /* qemu's BAT size, in its 32-bit arithmetic: one sector-bitmap entry
     * follows every chunk_ratio payload entries. */
    data_blocks = (disk_size + s->block_size - 1) / s->block_size;
    nblocks = (uint32_t)data_blocks;
    s->bat_entries = nblocks + ((uint32_t)(nblocks - 1) >> s->chunk_ratio_bits);
    if (s->has_parent) {
        /* Every chunk, the last one too, ends with its sector bitmap
         * entry; no 32-bit wrap-around here. */
        uint64_t chunks = (data_blocks + s->chunk_ratio - 1) / s->chunk_ratio;

        if (data_blocks == 0 || data_blocks > UINT32_MAX ||
            chunks * (s->chunk_ratio + 1) > bat_len / 8) {
            rc = open_error(s, INS_EINVAL);
            goto fail;
        }
        s->bat_entries = (uint32_t)(chunks * (s->chunk_ratio + 1));
    }
    if (s->bat_entries > bat_len / 8) {
        rc = open_error(s, INS_EINVAL);
        goto fail;
    }
    disk_bytes = (disk_size >> 9) << 9;
    if ((rc = load_bat(s, bat_len, disk_bytes)) < 0)
        goto fail;
    if ((disk_size >> 9) > (uint64_t)INT64_MAX / 512) {
        rc = ins_error(ctx, INS_EFBIG, "Could not refresh total sector count: "
                       "File too large");
        goto fail;
    }
    s->base.virtual_size = disk_bytes;
    *out = &s->base;
    return INS_OK;
fail:
    vhdx_close(&s->base);
    return rc;
}

static int vhdx_info(struct ins_image *img, struct tree_builder *tb,
                     struct ins_info *info)
{
    struct vhdx_image *s = (struct vhdx_image *)img;

    (void)tb;
    info->virtual_size = img->virtual_size;
    info->has_cluster_size = 1;
    info->cluster_size = s->block_size;
    info->has_dirty_flag = 1;
    return INS_OK;
}

/*
 * The run of sectors from sector (of the chunk) that share the bit of the
 * first one in the sector bitmap at bm_off, up to max sectors.  Returns
 * the bit (1: in this file) or a negative INS_E*.
 */
static int bitmap_run(struct vhdx_image *s, uint64_t bm_off, uint64_t sector,
                      uint64_t max, uint64_t *run)
{
    uint8_t buf[512];
    uint64_t n = 0, loaded = UINT64_MAX;
    int first = -1;

    while (n < max) {
        uint64_t bit = sector + n, byte = bit / 8;
        int v;

        if (loaded == UINT64_MAX || byte < loaded || byte >= loaded + sizeof(buf)) {
            loaded = byte;
            if (ins_read_zfill(s->base.file, buf, sizeof(buf), bm_off + byte) < 0)
                return ins_error(s->base.ctx, INS_EIO, "Input/output error");
        }
        v = (buf[byte - loaded] >> (bit % 8)) & 1;
        if (first < 0)
            first = v;
        else if (v != first)
            break;
        n++;
    }
    *run = n;
    return first;
}

/*
 * Block status of a differencing image: present sectors are data at their
 * offset in this file, explicit zero states read as zeros, the rest (not
 * present, or a clear bit in the sector bitmap) is the parent's.
 */
static int diff_block_status(struct vhdx_image *s, uint64_t offset,
                             uint64_t bytes, struct ins_bstat *st)
{
    uint64_t block = offset / s->block_size;
    uint64_t in_block = offset % s->block_size;
    uint64_t idx = block + (block >> s->chunk_ratio_bits), e, sb, bm;
    uint64_t rest = s->block_size - in_block, first, last, base, run;
    int bit;

    if (idx >= s->bat_entries || bat_get(s, idx, &e) < 0)
        return ins_error(s->base.ctx, INS_EIO, "Input/output error");
    st->pnum = rest < bytes ? rest : bytes;
    st->map = (e & BAT_OFFSET_MASK) + in_block;
    st->file = s->base.file;
    switch (e & BAT_STATE_MASK) {
    case PAYLOAD_NOT_PRESENT:
        return 0;
    case PAYLOAD_FULLY_PRESENT:
        return INS_BS_DATA | INS_BS_OFFSET_VALID;
    case PAYLOAD_PARTIALLY_PRESENT:
        break;
    default:
        return INS_BS_ZERO;
    }
    /* The chunk's sector bitmap entry ends its group of BAT entries. */
    sb = (block >> s->chunk_ratio_bits) * (s->chunk_ratio + 1) + s->chunk_ratio;
    if (sb >= s->bat_entries || bat_get(s, sb, &bm) < 0)
        return ins_error(s->base.ctx, INS_EIO, "Input/output error");
    if ((bm & BAT_STATE_MASK) != SB_BLOCK_PRESENT)
        return 0;               /* no bitmap: nothing is in this file */
    /* Sectors are numbered from the start of the chunk. */
    base = (block & (s->chunk_ratio - 1)) * (s->block_size / 512);
    first = base + in_block / 512;
    last = base + (in_block + st->pnum - 1) / 512;
    bit = bitmap_run(s, bm & BAT_OFFSET_MASK, first, last - first + 1, &run);
    if (bit < 0)
        return bit;
    if (first + run <= last)
        st->pnum = (first + run - base) * 512 - in_block;
    return bit ? INS_BS_DATA | INS_BS_OFFSET_VALID : 0;
}

/*
 * qemu's vhdx driver has no block status of its own, so qemu's generic
 * answer applies: everything is data, at no known offset.  Reads then
 * look at the BAT.
 */
static int vhdx_block_status(struct ins_image *img, uint64_t offset,
                             uint64_t bytes, struct ins_bstat *st)
{
    struct vhdx_image *s = (struct vhdx_image *)img;

    if (s->has_parent)
        return diff_block_status(s, offset, bytes, st);
    st->pnum = bytes;
    return INS_BS_DATA;
}

/* Fully present blocks hold the guest bytes as they are, and blocks in
 * the zero states read as zeros (see vhdx_read). */
static int vhdx_locate(struct ins_image *img, uint64_t offset, uint64_t bytes,
                       struct ins_bstat *st)
{
    struct vhdx_image *s = (struct vhdx_image *)img;
    uint64_t block = offset / s->block_size;
    uint64_t in_block = offset % s->block_size;
    uint64_t idx = block + (block >> s->chunk_ratio_bits), e;

    if (idx >= s->bat_entries || bat_get(s, idx, &e) < 0)
        return ins_error(img->ctx, INS_EIO, "Input/output error");
    st->pnum = s->block_size - in_block < bytes ? s->block_size - in_block : bytes;
    switch (e & BAT_STATE_MASK) {
    case PAYLOAD_FULLY_PRESENT:
        break;
    case PAYLOAD_NOT_PRESENT:
    case PAYLOAD_UNDEFINED:
    case PAYLOAD_ZERO:
    case PAYLOAD_UNMAPPED:
    case PAYLOAD_UNMAPPED_V095:
        return 2;
    default:
        return 0;
    }
    if (ins_add_overflow(e & BAT_OFFSET_MASK, in_block, &st->map))
        return 0;               /* let the read report it */
    st->file = img->file;
    return 1;
}

/* Sector-bitmap entries sit after every chunk_ratio payload entries. */
static int vhdx_read(struct ins_image *img, void *buf, size_t len,
                     uint64_t offset)
{
    struct vhdx_image *s = (struct vhdx_image *)img;
    uint8_t *p = buf;

    while (len > 0) {
        uint64_t block = offset / s->block_size;
        uint64_t in_block = offset % s->block_size;
        uint64_t idx = block + (block >> s->chunk_ratio_bits), e;
        size_t n = s->block_size - in_block < len ? (size_t)(s->block_size - in_block)
                                                  : len;
        int rc;

        if (idx >= s->bat_entries || bat_get(s, idx, &e) < 0)
            return ins_error(img->ctx, INS_EIO, "Input/output error");
        switch (e & BAT_STATE_MASK) {
        case PAYLOAD_NOT_PRESENT:
        case PAYLOAD_UNDEFINED:
        case PAYLOAD_ZERO:
        case PAYLOAD_UNMAPPED:
        case PAYLOAD_UNMAPPED_V095:
            memset(p, 0, n);
            break;
        case PAYLOAD_FULLY_PRESENT:
            rc = ins_read_zfill(img->file, p, n, (e & BAT_OFFSET_MASK) + in_block);
            if (rc < 0)
                return rc;
            break;
        case PAYLOAD_PARTIALLY_PRESENT:
            /* Only differencing images have these, and the read layer
             * asks only for the sectors block status found here. */
            if (s->has_parent) {
                rc = ins_read_zfill(img->file, p, n,
                                    (e & BAT_OFFSET_MASK) + in_block);
                if (rc < 0)
                    return rc;
                break;
            }
            return ins_error(img->ctx, INS_EIO, "Input/output error");
        default:
            return ins_error(img->ctx, INS_EIO, "Input/output error");
        }
        p += n;
        offset += n;
        len -= n;
    }
    return INS_OK;
}

/* A differencing image's parent, always a VHDX image. */
static int vhdx_backing(struct ins_image *img, const char **name,
                        const char **format)
{
    struct vhdx_image *s = (struct vhdx_image *)img;

    *name = s->has_parent ? s->parent : NULL;
    *format = s->has_parent ? "vhdx" : NULL;
    return INS_OK;
}

void ins_vhdx_layout(const struct ins_image *img, struct vhdx_layout *l)
{
    const struct vhdx_image *s = (const struct vhdx_image *)img;

    l->block_size = s->block_size;
    l->chunk_ratio = s->chunk_ratio;
    l->bat_entries = s->bat_entries;
    l->bat_offset = s->bat_offset;
    l->bat_len = s->bat_len;
    l->meta_offset = s->meta_offset;
    l->log_offset = s->log_offset;
    l->log_length = s->log_length;
    l->has_parent = s->has_parent;
    l->log_dirty = s->log_dirty;
    l->log_replayed = s->log_replayed;
}

const struct ins_driver ins_drv_vhdx = {
    .name = "vhdx",
    .probe = vhdx_probe,
    .open = vhdx_open,
    .info = vhdx_info,
    .close = vhdx_close,
    .block_status = vhdx_block_status,
    .read = vhdx_read,
    .locate = vhdx_locate,
    .backing = vhdx_backing,
    .supports_backing = 1,
    .backing_ref_kind = INS_REF_PARENT,
    .check = ins_vhdx_check,
};

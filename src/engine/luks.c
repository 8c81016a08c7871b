/*
 * luks.c - the luks format: a LUKS (version 1) header followed by the
 * encrypted payload.
 *
 * qemu-img info opens LUKS images without the passphrase (BDRV_O_NO_IO):
 * it validates the header, parses the algorithm names and reports them as
 * QCryptoBlockInfoLUKS.  We do the same and never touch key material.
 * The same header parser serves qcow2's LUKS encryption (luks.h), whose
 * header lives inside the qcow2 file.
 *
 * qemu implements only LUKS version 1: a LUKS2 header is "not supported"
 * with -f luks and is not recognised by probing, so neither do we.
 */
#include "luks.h"

#include <string.h>

#define LUKS_MAGIC_LEN          6
#define LUKS_VERSION            1
#define LUKS_HEADER_SIZE        592     /* through the eighth key slot */
#define LUKS_NAME_LEN           32      /* cipher name, mode, hash spec */
#define LUKS_UUID_LEN           40
#define LUKS_NUM_SLOTS          8
#define LUKS_SLOT_SIZE          48
#define LUKS_STRIPES            4000
#define LUKS_SECTOR             512u
#define LUKS_KEY_SLOT_OFFSET    4096u
#define LUKS_HEADER_SECTORS     (LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR)
#define LUKS_SLOT_DISABLED      0x0000DEADu
#define LUKS_SLOT_ENABLED       0x00AC71F3u

static const uint8_t luks_magic[LUKS_MAGIC_LEN] = { 'L', 'U', 'K', 'S', 0xBA, 0xBE };

struct luks_slot {
    uint32_t active;
    uint32_t iterations;
    uint32_t key_offset;        /* sectors */
    uint32_t stripes;
};

/* The header fields qemu looks at, in host byte order. */
struct luks_header {
    uint8_t magic[LUKS_MAGIC_LEN];
    uint16_t version;
    char cipher_name[LUKS_NAME_LEN];
    char cipher_mode[LUKS_NAME_LEN];
    char hash_spec[LUKS_NAME_LEN];
    uint32_t payload_offset;    /* sectors */
    uint32_t key_bytes;
    uint32_t mk_iterations;
    char uuid[LUKS_UUID_LEN];
    struct luks_slot slots[LUKS_NUM_SLOTS];
};

/* What parsing the algorithm names yields (QAPI enum spellings). */
struct luks_algs {
    const char *cipher_alg;     /* "aes-256", ... */
    const char *cipher_mode;    /* "xts", ... */
    const char *ivgen_alg;      /* "plain64", ... */
    const char *ivgen_hash_alg; /* set only for essiv */
    const char *hash_alg;
};

/* ---- qemu's algorithm tables ---- */

/* QCryptoHashAlgo, with digest lengths (ESSIV needs them). */
static const struct { const char *name; unsigned digest; } luks_hashes[] = {
    { "md5", 16 }, { "sha1", 20 }, { "sha224", 28 }, { "sha256", 32 },
    { "sha384", 48 }, { "sha512", 64 }, { "ripemd160", 20 },
    { "sm3", 32 },      /* qemu 9.2+; 7.2 rejects it */
};

static const char *const luks_modes[] = { "ecb", "cbc", "xts", "ctr" };
static const char *const luks_ivgens[] = { "plain", "plain64", "essiv" };

/* The LUKS cipher names qemu maps, and the key sizes each allows. */
struct luks_cipher {
    const char *luks_name;
    unsigned key_bytes;
    const char *qapi_name;
};

static const struct luks_cipher luks_ciphers[] = {
    { "aes", 16, "aes-128" }, { "aes", 24, "aes-192" }, { "aes", 32, "aes-256" },
    { "cast5", 16, "cast5-128" },
    { "serpent", 16, "serpent-128" }, { "serpent", 24, "serpent-192" },
    { "serpent", 32, "serpent-256" },
    { "twofish", 16, "twofish-128" }, { "twofish", 24, "twofish-192" },
    { "twofish", 32, "twofish-256" },
    { "sm4", 16, "sm4" },   /* qemu 9.0+ builds with SM4; 7.2 rejects it */
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* qapi_enum_parse(): exact, case-sensitive match; -1 when absent. */
static int enum_index(const char *const *names, size_t n, const char *s)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (strcmp(names[i], s) == 0)
            return (int)i;
    return -1;
}

static int hash_index(const char *s)
{
    size_t i;

    for (i = 0; i < COUNT(luks_hashes); i++)
        if (strcmp(luks_hashes[i].name, s) == 0)
            return (int)i;
    return -1;
}

/* ---- reading and checking the header ---- */

static int luks_load(struct ins_ctx *ctx, struct ins_bdev *file,
                     uint64_t offset, struct luks_header *h)
{
    uint8_t buf[LUKS_HEADER_SIZE];
    uint64_t end;
    int i, rc;

    /* qemu reads through the block layer, which pads past end of file
     * with zeros; a short file then fails the checks below. */
    if (ins_add_overflow(offset, sizeof(buf), &end))
        return ins_error(ctx, INS_EINVAL, "Volume is not in LUKS format");
    rc = ins_read_zfill(file, buf, sizeof(buf), offset);
    if (rc < 0)
        return ins_error(ctx, rc, "Could not read encryption header: "
                         "Input/output error");
    memset(h, 0, sizeof(*h));
    memcpy(h->magic, buf, LUKS_MAGIC_LEN);
    h->version = ins_be16(buf + 6);
    memcpy(h->cipher_name, buf + 8, LUKS_NAME_LEN);
    memcpy(h->cipher_mode, buf + 40, LUKS_NAME_LEN);
    memcpy(h->hash_spec, buf + 72, LUKS_NAME_LEN);
    h->payload_offset = ins_be32(buf + 104);
    h->key_bytes = ins_be32(buf + 108);
    /* 112: master key digest (20), 132: master key salt (32) */
    h->mk_iterations = ins_be32(buf + 164);
    memcpy(h->uuid, buf + 168, LUKS_UUID_LEN);
    for (i = 0; i < LUKS_NUM_SLOTS; i++) {
        const uint8_t *s = buf + 208 + i * LUKS_SLOT_SIZE;

        h->slots[i].active = ins_be32(s);
        h->slots[i].iterations = ins_be32(s + 4);
        /* 8: salt (32) */
        h->slots[i].key_offset = ins_be32(s + 40);
        h->slots[i].stripes = ins_be32(s + 44);
    }
    return INS_OK;
}

/*
 * Sectors one key slot's split key occupies, as cryptsetup lays it out:
 * key bytes times stripes (32-bit arithmetic, as qemu's), rounded up to
 * sectors and then to the header's 8 sectors.
 */
static uint32_t splitkey_sectors(const struct luks_header *h, uint32_t stripes)
{
    uint32_t bytes = h->key_bytes * stripes;
    uint64_t sectors = ((uint64_t)bytes + LUKS_SECTOR - 1) / LUKS_SECTOR;

    return (uint32_t)((sectors + LUKS_HEADER_SECTORS - 1) /
                      LUKS_HEADER_SECTORS * LUKS_HEADER_SECTORS);
}

/* qemu's ranges_overlap() on [start, start + len). */
static int ranges_overlap(uint64_t s1, uint64_t l1, uint64_t s2, uint64_t l2)
{
    uint64_t last1 = s1 + l1 - 1, last2 = s2 + l2 - 1;

    return !(last2 < s1 || last1 < s2);
}

/* qcrypto_block_luks_check_header(), in qemu's order. */
static int luks_check(struct ins_ctx *ctx, const struct luks_header *h)
{
    size_t i, j;

    if (memcmp(h->magic, luks_magic, LUKS_MAGIC_LEN) != 0)
        return ins_error(ctx, INS_EINVAL, "Volume is not in LUKS format");
    if (h->version != LUKS_VERSION)
        return ins_error(ctx, INS_ENOTSUP, "LUKS version %u is not supported",
                         (unsigned)h->version);
    if (!memchr(h->cipher_name, '\0', LUKS_NAME_LEN))
        return ins_error(ctx, INS_EINVAL,
                         "LUKS header cipher name is not NUL terminated");
    if (!memchr(h->cipher_mode, '\0', LUKS_NAME_LEN))
        return ins_error(ctx, INS_EINVAL,
                         "LUKS header cipher mode is not NUL terminated");
    if (!memchr(h->hash_spec, '\0', LUKS_NAME_LEN))
        return ins_error(ctx, INS_EINVAL,
                         "LUKS header hash spec is not NUL terminated");
    if (h->payload_offset < LUKS_HEADER_SECTORS)
        return ins_error(ctx, INS_EINVAL,
                         "LUKS payload is overlapping with the header");
    if (h->mk_iterations == 0)
        return ins_error(ctx, INS_EINVAL, "LUKS key iteration count is zero");

    for (i = 0; i < LUKS_NUM_SLOTS; i++) {
        const struct luks_slot *s1 = &h->slots[i];
        uint32_t start1 = s1->key_offset;
        uint32_t len1 = splitkey_sectors(h, s1->stripes);

        if (s1->stripes != LUKS_STRIPES)
            return ins_error(ctx, INS_EINVAL,
                             "Keyslot %zu is corrupted (stripes %d != %d)",
                             i, (int)s1->stripes, LUKS_STRIPES);
        if (s1->active != LUKS_SLOT_DISABLED && s1->active != LUKS_SLOT_ENABLED)
            return ins_error(ctx, INS_EINVAL,
                             "Keyslot %zu state (active/disable) is corrupted", i);
        if (s1->active == LUKS_SLOT_ENABLED && s1->iterations == 0)
            return ins_error(ctx, INS_EINVAL,
                             "Keyslot %zu iteration count is zero", i);
        if (start1 < LUKS_HEADER_SECTORS)
            return ins_error(ctx, INS_EINVAL,
                             "Keyslot %zu is overlapping with the LUKS header", i);
        /* 32-bit sum, as qemu computes it. */
        if ((uint32_t)(start1 + len1) > h->payload_offset)
            return ins_error(ctx, INS_EINVAL,
                             "Keyslot %zu is overlapping with the encrypted payload", i);
        for (j = i + 1; j < LUKS_NUM_SLOTS; j++) {
            const struct luks_slot *s2 = &h->slots[j];

            if (ranges_overlap(start1, len1, s2->key_offset,
                               splitkey_sectors(h, s2->stripes)))
                return ins_error(ctx, INS_EINVAL,
                                 "Keyslots %zu and %zu are overlapping in the header",
                                 i, j);
        }
    }
    return INS_OK;
}

/* qcrypto_block_luks_essiv_cipher(): the cipher ESSIV uses is the block
 * cipher's family with a key as long as the hash digest. */
static int essiv_check(struct ins_ctx *ctx, const struct luks_cipher *c,
                       unsigned digest)
{
    size_t i;

    if (digest == c->key_bytes)
        return INS_OK;
    /* Only the families with several key sizes can switch size. */
    if (strcmp(c->luks_name, "cast5") == 0 || strcmp(c->luks_name, "sm4") == 0)
        return ins_error(ctx, INS_ENOTSUP, "Cipher %s not supported with essiv",
                         c->qapi_name);
    for (i = 0; i < COUNT(luks_ciphers); i++)
        if (strcmp(luks_ciphers[i].luks_name, c->luks_name) == 0 &&
            luks_ciphers[i].key_bytes == digest)
            return INS_OK;
    return ins_error(ctx, INS_ENOTSUP, "No %s cipher with key size %u available",
                     strcmp(c->luks_name, "aes") == 0 ? "AES" :
                     strcmp(c->luks_name, "serpent") == 0 ? "Serpent" : "Twofish",
                     digest);
}

/* qcrypto_block_luks_parse_header(): "<mode>-<ivgen>[:<ivhash>]" plus the
 * cipher and hash names, looked up in qemu's order. */
static int luks_parse_algs(struct ins_ctx *ctx, const struct luks_header *h,
                           struct luks_algs *a)
{
    char mode[LUKS_NAME_LEN];
    char *ivgen, *ivhash;
    const struct luks_cipher *cipher = NULL;
    int mode_idx, ivgen_idx, ivhash_idx = -1, hash_idx;
    uint32_t key_bytes = h->key_bytes;
    size_t i;

    memset(a, 0, sizeof(*a));
    memcpy(mode, h->cipher_mode, sizeof(mode));     /* NUL checked */
    ivgen = strchr(mode, '-');
    if (!ivgen)
        return ins_error(ctx, INS_EINVAL,
                         "Unexpected cipher mode string format '%s'",
                         h->cipher_mode);
    *ivgen++ = '\0';
    ivhash = strchr(ivgen, ':');
    if (ivhash) {
        *ivhash++ = '\0';
        ivhash_idx = hash_index(ivhash);
        if (ivhash_idx < 0)
            return ins_error(ctx, INS_ENOTSUP,
                             "Hash algorithm '%s' not supported", ivhash);
    }
    mode_idx = enum_index(luks_modes, COUNT(luks_modes), mode);
    if (mode_idx < 0)
        return ins_error(ctx, INS_ENOTSUP, "Cipher mode '%s' not supported", mode);
    a->cipher_mode = luks_modes[mode_idx];

    if (strcmp(a->cipher_mode, "xts") == 0)
        key_bytes /= 2;
    for (i = 0; i < COUNT(luks_ciphers); i++)
        if (strcmp(luks_ciphers[i].luks_name, h->cipher_name) == 0 &&
            luks_ciphers[i].key_bytes == key_bytes)
            cipher = &luks_ciphers[i];
    if (!cipher)
        return ins_error(ctx, INS_ENOTSUP,
                         "Algorithm '%s' with key size %d bytes not supported",
                         h->cipher_name, (int)key_bytes);
    a->cipher_alg = cipher->qapi_name;

    hash_idx = hash_index(h->hash_spec);
    if (hash_idx < 0)
        return ins_error(ctx, INS_ENOTSUP, "Hash algorithm '%s' not supported",
                         h->hash_spec);
    a->hash_alg = luks_hashes[hash_idx].name;

    ivgen_idx = enum_index(luks_ivgens, COUNT(luks_ivgens), ivgen);
    if (ivgen_idx < 0)
        return ins_error(ctx, INS_ENOTSUP, "IV generator '%s' not supported", ivgen);
    a->ivgen_alg = luks_ivgens[ivgen_idx];

    if (strcmp(a->ivgen_alg, "essiv") == 0) {
        int rc;

        if (!ivhash)
            return ins_error(ctx, INS_EINVAL,
                             "Missing IV generator hash specification");
        rc = essiv_check(ctx, cipher, luks_hashes[ivhash_idx].digest);
        if (rc < 0)
            return rc;
        a->ivgen_hash_alg = luks_hashes[ivhash_idx].name;
    }
    return INS_OK;
}

/* QCryptoBlockInfoLUKS members, in the QAPI schema's order.  qemu 9.0
 * added detached-header. */
static void luks_put_info(struct ins_ctx *ctx, struct tree_builder *tb,
                          struct tree *d, const struct luks_header *h,
                          const struct luks_algs *a)
{
    unsigned version = INS_QEMU_VERSION(ctx);

    struct tree *slots;
    size_t i;

    tree_put_str(tb, d, "cipher-alg", a->cipher_alg);
    tree_put_str(tb, d, "cipher-mode", a->cipher_mode);
    tree_put_str(tb, d, "ivgen-alg", a->ivgen_alg);
    if (a->ivgen_hash_alg)
        tree_put_str(tb, d, "ivgen-hash-alg", a->ivgen_hash_alg);
    tree_put_str(tb, d, "hash-alg", a->hash_alg);
    if (version == 0 || version >= 900)
        tree_put_bool(tb, d, "detached-header", 0);
    tree_put_int(tb, d, "payload-offset",
                 (int64_t)h->payload_offset * LUKS_SECTOR);
    tree_put_int(tb, d, "master-key-iters", h->mk_iterations);
    tree_put(tb, d, "uuid", tree_new_strn(tb, h->uuid,
                                          strnlen(h->uuid, LUKS_UUID_LEN)));
    slots = tree_put_list(tb, d, "slots");
    for (i = 0; i < LUKS_NUM_SLOTS; i++) {
        const struct luks_slot *s = &h->slots[i];
        struct tree *sd = tree_append(tb, slots, tree_new_dict(tb));
        int active = s->active == LUKS_SLOT_ENABLED;

        tree_put_bool(tb, sd, "active", active);
        if (active) {
            tree_put_int(tb, sd, "iters", s->iterations);
            tree_put_int(tb, sd, "stripes", s->stripes);
        }
        tree_put_int(tb, sd, "key-offset", (int64_t)s->key_offset * LUKS_SECTOR);
    }
}

/* Loads, checks and parses the header at offset. */
static int luks_read_header(struct ins_ctx *ctx, struct ins_bdev *file,
                            uint64_t offset, struct luks_header *h,
                            struct luks_algs *a)
{
    int rc = luks_load(ctx, file, offset, h);

    if (rc == INS_OK)
        rc = luks_check(ctx, h);
    if (rc == INS_OK)
        rc = luks_parse_algs(ctx, h, a);
    return rc;
}

int ins_luks_describe(struct ins_ctx *ctx, struct ins_bdev *file,
                      uint64_t offset, struct tree_builder *tb,
                      struct tree *dict, uint64_t *payload_offset)
{
    struct luks_header h;
    struct luks_algs a;
    int rc = luks_read_header(ctx, file, offset, &h, &a);

    if (rc < 0)
        return rc;
    if (tb && dict)
        luks_put_info(ctx, tb, dict, &h, &a);
    if (payload_offset)
        *payload_offset = (uint64_t)h.payload_offset * LUKS_SECTOR;
    return INS_OK;
}

/* ---- the luks block driver ---- */

struct luks_image {
    struct ins_image base;
    struct luks_header h;
    struct luks_algs a;
    uint64_t payload_offset;    /* bytes */
};

/* The protocol layer's length: the file size in whole sectors. */
static uint64_t file_length(const struct ins_bdev *file)
{
    return (file->size + LUKS_SECTOR - 1) / LUKS_SECTOR * LUKS_SECTOR;
}

/* block_crypto_probe_luks(): magic and version 1 decide. */
static int luks_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                      const uint8_t *head, size_t head_len)
{
    uint8_t h[8];

    (void)ctx; (void)file;
    /* qemu probes 2048 bytes padded with zeros past end of file (an
     * empty file is raw before any probe). */
    if (head_len == 0)
        return 0;
    memset(h, 0, sizeof(h));
    memcpy(h, head, head_len < sizeof(h) ? head_len : sizeof(h));
    if (memcmp(h, luks_magic, LUKS_MAGIC_LEN) == 0 && ins_be16(h + 6) == LUKS_VERSION)
        return 100;
    return 0;
}

static int luks_open(struct ins_ctx *ctx, struct ins_bdev *file,
                     unsigned flags, struct ins_image **out)
{
    struct luks_image *li = ins_calloc(ctx, 1, sizeof(*li));
    int rc;

    (void)flags;
    if (!li)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    rc = luks_read_header(ctx, file, 0, &li->h, &li->a);
    if (rc < 0) {
        ins_free(ctx, li);
        return rc;
    }
    li->payload_offset = (uint64_t)li->h.payload_offset * LUKS_SECTOR;
    /* block_crypto_co_getlength(): what follows the payload offset in the
     * sector-rounded file; a payload past the end is an I/O error. */
    if (li->payload_offset > file_length(file)) {
        ins_free(ctx, li);
        return ins_error(ctx, INS_EIO, "Could not refresh total sector count: "
                         "Input/output error");
    }
    li->base.drv = &ins_drv_luks;
    li->base.ctx = ctx;
    li->base.file = file;
    li->base.virtual_size = file_length(file) - li->payload_offset;
    *out = &li->base;
    return INS_OK;
}

static int luks_info(struct ins_image *img, struct tree_builder *tb,
                     struct ins_info *info)
{
    struct luks_image *li = (struct luks_image *)img;

    info->virtual_size = img->virtual_size;
    info->encrypted = 1;
    info->has_dirty_flag = 1;
    info->format_specific_type = "luks";
    info->format_specific = tree_new_dict(tb);
    luks_put_info(img->ctx, tb, info->format_specific, &li->h, &li->a);
    return tb->failed ? ins_error(img->ctx, INS_ENOMEM, "Out of memory") : INS_OK;
}

static void luks_close(struct ins_image *img)
{
    if (img)
        ins_free(img->ctx, img);
}

const struct ins_driver ins_drv_luks = {
    .name = "luks",
    .probe = luks_probe,
    .open = luks_open,
    .info = luks_info,
    .close = luks_close,
};

/*
 * vdi.c - VirtualBox's VDI format.
 *
 * A 512-byte little-endian header, a block map of 32-bit entries and
 * 1 MiB data blocks.  qemu accepts only version 1.1 with 512-byte sectors
 * and 1 MiB blocks, and refuses differencing images (link/parent UUIDs).
 * qemu reports no format-specific data; --extra-detail adds ours.
 */
#include "engine.h"
#include "fmt_check.h"

#include <stdio.h>
#include <string.h>

#define VDI_HEADER_SIZE     512
#define VDI_SIGNATURE       0xbeda107fu
#define VDI_VERSION_1_1     0x00010001u
#define VDI_TYPE_DYNAMIC    1
#define VDI_TYPE_STATIC     2
#define VDI_SECTOR          512u
#define VDI_BLOCK_SIZE      (1u << 20)
/* qemu keeps the block map in one read: at most BDRV_REQUEST_MAX_BYTES. */
#define VDI_BLOCKS_MAX      ((((uint32_t)INT32_MAX >> 9) << 9) / 4)
#define VDI_DISK_SIZE_MAX   ((uint64_t)VDI_BLOCKS_MAX * VDI_BLOCK_SIZE)
#define VDI_UNALLOCATED     0xffffffffu
#define VDI_DISCARDED       0xfffffffeu

/* Header field offsets. */
#define VDI_OFF_SIGNATURE       64
#define VDI_OFF_VERSION         68
#define VDI_OFF_IMAGE_TYPE      76
#define VDI_OFF_OFFSET_BMAP     340
#define VDI_OFF_OFFSET_DATA     344
#define VDI_OFF_SECTOR_SIZE     360
#define VDI_OFF_DISK_SIZE       368
#define VDI_OFF_BLOCK_SIZE      376
#define VDI_OFF_BLOCKS          384
#define VDI_OFF_ALLOCATED       388
#define VDI_OFF_UUID_IMAGE      392
#define VDI_OFF_UUID_LINK       424
#define VDI_OFF_UUID_PARENT     440

/* The block map is loaded only for reading, and only up to this size;
 * qemu loads it whole (up to 4 GiB) at open. */
#define VDI_MAX_BMAP_BYTES  (256u << 20)

struct vdi_image {
    struct ins_image base;
    uint32_t image_type;
    uint32_t offset_bmap;
    uint32_t offset_data;
    uint32_t blocks_in_image;
    uint32_t blocks_allocated;
    uint8_t uuid_image[16];
    uint32_t *bmap;             /* loaded on first read, or NULL */
};

/* vdi_probe(): a whole header with the signature. */
static int vdi_probe(struct ins_ctx *ctx, struct ins_bdev *file,
                     const uint8_t *head, size_t head_len)
{
    uint8_t h[VDI_HEADER_SIZE];

    (void)ctx; (void)file;
    /* qemu probes 2048 bytes padded with zeros past end of file (an
     * empty file is raw before any probe). */
    if (head_len == 0)
        return 0;
    memset(h, 0, sizeof(h));
    memcpy(h, head, head_len < sizeof(h) ? head_len : sizeof(h));
    return ins_le32(h + VDI_OFF_SIGNATURE) == VDI_SIGNATURE ? 100 : 0;
}

static int uuid_is_null(const uint8_t *u)
{
    static const uint8_t zero[16];

    return memcmp(u, zero, sizeof(zero)) == 0;
}

/* vdi_open()'s checks, in qemu's order (the size limit comes before
 * even the signature). */
static int vdi_check_header(struct ins_ctx *ctx, const uint8_t *h,
                            uint64_t *disk_size)
{
    uint32_t signature = ins_le32(h + VDI_OFF_SIGNATURE);
    uint32_t version = ins_le32(h + VDI_OFF_VERSION);
    uint32_t offset_bmap = ins_le32(h + VDI_OFF_OFFSET_BMAP);
    uint32_t offset_data = ins_le32(h + VDI_OFF_OFFSET_DATA);
    uint32_t sector_size = ins_le32(h + VDI_OFF_SECTOR_SIZE);
    uint32_t block_size = ins_le32(h + VDI_OFF_BLOCK_SIZE);
    uint32_t blocks = ins_le32(h + VDI_OFF_BLOCKS);
    uint64_t size = ins_le64(h + VDI_OFF_DISK_SIZE);
    uint64_t room = (uint64_t)blocks * block_size;

    if (size > VDI_DISK_SIZE_MAX)
        return ins_error(ctx, INS_ENOTSUP, "Unsupported VDI image size (size is "
                         "0x%llx, max supported is 0x%llx)",
                         (unsigned long long)size,
                         (unsigned long long)VDI_DISK_SIZE_MAX);
    /* 'VBoxManage convertfromraw' writes odd sizes; qemu rounds up. */
    size = (size + VDI_SECTOR - 1) / VDI_SECTOR * VDI_SECTOR;

    if (signature != VDI_SIGNATURE)
        return ins_error(ctx, INS_EINVAL,
                         "Image not in VDI format (bad signature %08x)", signature);
    if (version != VDI_VERSION_1_1)
        return ins_error(ctx, INS_ENOTSUP, "unsupported VDI image (version %u.%u)",
                         version >> 16, version & 0xffff);
    if (offset_bmap % VDI_SECTOR != 0)
        return ins_error(ctx, INS_ENOTSUP, "unsupported VDI image (unaligned "
                         "block map offset 0x%x)", offset_bmap);
    if (offset_data % VDI_SECTOR != 0)
        return ins_error(ctx, INS_ENOTSUP, "unsupported VDI image (unaligned "
                         "data offset 0x%x)", offset_data);
    if (sector_size != VDI_SECTOR)
        return ins_error(ctx, INS_ENOTSUP, "unsupported VDI image (sector size "
                         "%u is not %u)", sector_size, VDI_SECTOR);
    if (block_size != VDI_BLOCK_SIZE)
        return ins_error(ctx, INS_ENOTSUP, "unsupported VDI image (block size "
                         "%u is not %u)", block_size, VDI_BLOCK_SIZE);
    if (size > room)
        return ins_error(ctx, INS_ENOTSUP, "unsupported VDI image (disk size "
                         "%llu, image bitmap has room for %llu)",
                         (unsigned long long)size, (unsigned long long)room);
    if (!uuid_is_null(h + VDI_OFF_UUID_LINK))
        return ins_error(ctx, INS_ENOTSUP,
                         "unsupported VDI image (non-NULL link UUID)");
    if (!uuid_is_null(h + VDI_OFF_UUID_PARENT))
        return ins_error(ctx, INS_ENOTSUP,
                         "unsupported VDI image (non-NULL parent UUID)");
    if (blocks > VDI_BLOCKS_MAX)
        return ins_error(ctx, INS_ENOTSUP, "unsupported VDI image (too many "
                         "blocks %u, max is %u)", blocks, VDI_BLOCKS_MAX);
    *disk_size = size;
    return INS_OK;
}

static int vdi_open(struct ins_ctx *ctx, struct ins_bdev *file,
                    unsigned flags, struct ins_image **out)
{
    uint8_t h[VDI_HEADER_SIZE];
    struct vdi_image *vi;
    uint64_t disk_size = 0;
    int rc;

    (void)flags;
    /* qemu's block layer reads past end of file as zeros. */
    rc = ins_read_zfill(file, h, sizeof(h), 0);
    if (rc < 0)
        return ins_error(ctx, rc, "Could not read VDI header");
    rc = vdi_check_header(ctx, h, &disk_size);
    if (rc < 0)
        return rc;
    vi = ins_calloc(ctx, 1, sizeof(*vi));
    if (!vi)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    vi->base.drv = &ins_drv_vdi;
    vi->base.ctx = ctx;
    vi->base.file = file;
    vi->base.virtual_size = disk_size;
    vi->image_type = ins_le32(h + VDI_OFF_IMAGE_TYPE);
    vi->offset_bmap = ins_le32(h + VDI_OFF_OFFSET_BMAP);
    vi->offset_data = ins_le32(h + VDI_OFF_OFFSET_DATA);
    vi->blocks_in_image = ins_le32(h + VDI_OFF_BLOCKS);
    vi->blocks_allocated = ins_le32(h + VDI_OFF_ALLOCATED);
    memcpy(vi->uuid_image, h + VDI_OFF_UUID_IMAGE, 16);
    *out = &vi->base;
    return INS_OK;
}

/* VirtualBox stores UUIDs with the first three fields little-endian. */
static void format_uuid(const uint8_t *u, char out[37])
{
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x",
             u[3], u[2], u[1], u[0], u[5], u[4], u[7], u[6],
             u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

static int vdi_info(struct ins_image *img, struct tree_builder *tb,
                    struct ins_info *info)
{
    struct vdi_image *vi = (struct vdi_image *)img;

    info->virtual_size = img->virtual_size;
    info->has_cluster_size = 1;
    info->cluster_size = VDI_BLOCK_SIZE;
    info->has_dirty_flag = 1;
    if (img->ctx->flags & INS_F_EXTRA_DETAIL) {
        struct tree *d = tree_new_dict(tb);
        char uuid[37];

        tree_put_str(tb, d, "image-type",
                     vi->image_type == VDI_TYPE_DYNAMIC ? "dynamic" :
                     vi->image_type == VDI_TYPE_STATIC ? "static" : "unknown");
        tree_put_int(tb, d, "block-size", VDI_BLOCK_SIZE);
        tree_put_int(tb, d, "blocks-in-image", vi->blocks_in_image);
        tree_put_int(tb, d, "blocks-allocated", vi->blocks_allocated);
        format_uuid(vi->uuid_image, uuid);
        tree_put_str(tb, d, "uuid", uuid);
        info->format_specific_type = "vdi";
        info->format_specific = d;
        if (tb->failed)
            return ins_error(img->ctx, INS_ENOMEM, "Out of memory");
    }
    return INS_OK;
}

/* ---- reading ---- */

static int vdi_load_bmap(struct vdi_image *vi)
{
    struct ins_ctx *ctx = vi->base.ctx;
    uint64_t bytes = (uint64_t)vi->blocks_in_image * 4;
    uint8_t *raw;
    uint32_t i;
    int rc;

    if (vi->bmap)
        return INS_OK;
    if (bytes > VDI_MAX_BMAP_BYTES)
        return ins_error(ctx, INS_EFBIG, "VDI block map of %llu bytes is too large",
                         (unsigned long long)bytes);
    vi->bmap = ins_malloc(ctx, bytes ? (size_t)bytes : 1);
    if (!vi->bmap)
        return ins_error(ctx, INS_ENOMEM, "Out of memory");
    raw = (uint8_t *)vi->bmap;
    rc = ins_read_zfill(vi->base.file, raw, (size_t)bytes, vi->offset_bmap);
    if (rc < 0) {
        ins_free(ctx, vi->bmap);
        vi->bmap = NULL;
        return ins_error(ctx, rc, "Could not read VDI block map");
    }
    for (i = 0; i < vi->blocks_in_image; i++)
        vi->bmap[i] = ins_le32(raw + 4 * (size_t)i);
    return INS_OK;
}

/* vdi_co_block_status(): one block at a time; unallocated and discarded
 * blocks read as zeros (VDI has no backing files). */
static int vdi_block_status(struct ins_image *img, uint64_t offset,
                            uint64_t bytes, struct ins_bstat *st)
{
    struct vdi_image *vi = (struct vdi_image *)img;
    uint64_t block = offset / VDI_BLOCK_SIZE;
    uint64_t in_block = offset % VDI_BLOCK_SIZE;
    uint32_t entry;
    int rc = vdi_load_bmap(vi);

    if (rc < 0)
        return rc;
    st->pnum = VDI_BLOCK_SIZE - in_block;
    if (st->pnum > bytes)
        st->pnum = bytes;
    entry = block < vi->blocks_in_image ? vi->bmap[block] : VDI_UNALLOCATED;
    if (entry >= VDI_DISCARDED)
        return INS_BS_ZERO;
    st->map = vi->offset_data + (uint64_t)entry * VDI_BLOCK_SIZE + in_block;
    st->file = img->file;
    return INS_BS_DATA | INS_BS_OFFSET_VALID |
           (vi->image_type == VDI_TYPE_STATIC ? INS_BS_RECURSE : 0);
}

static void vdi_close(struct ins_image *img)
{
    struct vdi_image *vi = (struct vdi_image *)img;

    if (!vi)
        return;
    ins_free(img->ctx, vi->bmap);
    ins_free(img->ctx, vi);
}

const struct ins_driver ins_drv_vdi = {
    .name = "vdi",
    .probe = vdi_probe,
    .open = vdi_open,
    .info = vdi_info,
    .close = vdi_close,
    .block_status = vdi_block_status,
    .read = ins_read_mapped,
    .plain_map = 1,
    .check = ins_vdi_check,
};

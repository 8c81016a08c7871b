/*
 * detect.c - format detection.
 *
 * Every driver scores the file as qemu's probes do; the highest score wins
 * (the earlier driver on a tie).  qemu-img falls back to raw for anything
 * it does not recognise, which is what lets a text file or a host secret
 * pass as a disk.  By default we accept raw only when the file carries a
 * valid MBR or GPT; INS_F_UNSAFE_QUIRKS restores qemu-img's answer.
 */
#include "engine.h"

#include <string.h>

const struct ins_driver *const ins_drivers[] = {
    &ins_drv_qcow2, &ins_drv_qcow, &ins_drv_qed, &ins_drv_vmdk,
    &ins_drv_vpc, &ins_drv_vhdx, &ins_drv_vdi, &ins_drv_luks,
    &ins_drv_parallels, &ins_drv_bochs, &ins_drv_cloop, &ins_drv_dmg,
    &ins_drv_iso, &ins_drv_raw, NULL,
};

const struct ins_driver *ins_find_driver(const char *name)
{
    size_t i;

    for (i = 0; ins_drivers[i]; i++)
        if (strcmp(ins_drivers[i]->name, name) == 0)
            return ins_drivers[i];
    return NULL;
}

/* An MBR partition entry is plausible when its boot flag is 0x00 or 0x80
 * and it describes a non-empty partition.  A protective MBR (type 0xEE)
 * only counts with the GPT it protects (gpt_valid). */
static int mbr_valid(const uint8_t *mbr)
{
    int i, used = 0;

    if (mbr[510] != 0x55 || mbr[511] != 0xAA)
        return 0;
    for (i = 0; i < 4; i++) {
        const uint8_t *e = mbr + 446 + 16 * i;

        if (e[0] != 0x00 && e[0] != 0x80)
            return 0;
        if (e[4] != 0 && e[4] != 0xEE && ins_le32(e + 12) != 0)
            used++;
    }
    return used > 0;
}

static int gpt_valid(struct ins_bdev *file, const uint8_t *mbr)
{
    uint8_t hdr[92];
    int i, protective = 0;

    for (i = 0; i < 4; i++)
        if (mbr[446 + 16 * i + 4] == 0xEE)
            protective = 1;
    if (!protective)
        return 0;
    if (ins_read(file, hdr, sizeof(hdr), 512) != INS_OK)
        return 0;
    return memcmp(hdr, "EFI PART", 8) == 0 && ins_le32(hdr + 12) >= 92;
}

int ins_has_partition_table(struct ins_bdev *file, const uint8_t *head,
                            size_t head_len)
{
    if (head_len < 512)
        return 0;
    return gpt_valid(file, head) || mbr_valid(head);
}

int ins_detect(struct ins_ctx *ctx, struct ins_bdev *file,
               struct ins_detect *det)
{
    uint8_t head[INS_PROBE_LEN];
    size_t head_len = file->size < sizeof(head) ? (size_t)file->size
                                                : sizeof(head);
    int unsafe = (ctx->flags & INS_F_UNSAFE_QUIRKS) != 0;
    size_t i;
    int rc;

    memset(det, 0, sizeof(*det));
    /* Like qemu: probes see a zero-padded buffer, and an empty file is
     * raw without probing (when raw fallback is allowed at all). */
    memset(head, 0, sizeof(head));
    if (file->size == 0) {
        if (unsafe) {
            det->drv = &ins_drv_raw;
            det->score = 1;
        }
        return INS_OK;
    }
    rc = ins_read(file, head, head_len, 0);
    if (rc < 0)
        return ins_error(ctx, rc, "Could not read image for determining its format");

    for (i = 0; ins_drivers[i]; i++) {
        const struct ins_driver *drv = ins_drivers[i];
        int score;

        if (drv == &ins_drv_raw || !drv->probe)
            continue;
        if (unsafe && drv == &ins_drv_iso)
            continue;
        score = drv->probe(ctx, file, head, head_len);
        if (score <= 0)
            continue;
        if (det->n_matches < sizeof(det->matches) / sizeof(det->matches[0]))
            det->matches[det->n_matches++] = drv;
        if (score > det->score) {
            det->score = score;
            det->drv = drv;
        }
    }
    det->has_partition_table = ins_has_partition_table(file, head, head_len);
    if (!det->drv && (unsafe || det->has_partition_table)) {
        det->drv = &ins_drv_raw;
        det->score = 1;
    }
    return INS_OK;
}

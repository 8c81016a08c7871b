/* test_detect.c - format detection, one minimal header per format, in
 * safe and unsafe modes. */
#include <stdlib.h>

#include "check.h"
#include "membdev.h"

static const char *detect(const uint8_t *data, size_t len, const char *name,
                          unsigned flags)
{
    struct membuf m = { data, len };
    struct ins_bdev bd;
    struct ins_ctx ctx;
    struct ins_detect det;

    memset(&bd, 0, sizeof(bd));
    bd.opaque = &m;
    bd.pread = mem_pread;
    bd.size = len;
    bd.name = name;
    memset(&ctx, 0, sizeof(ctx));
    ctx.alloc = &ins_libc_alloc;
    ctx.flags = flags;
    if (ins_detect(&ctx, &bd, &det) < 0)
        return "error";
    return det.drv ? det.drv->name : "none";
}

#define SIZE (64 * 1024)
static uint8_t img[SIZE];

static void reset(void)
{
    memset(img, 0, sizeof(img));
}

static void be32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = (uint8_t)v;
}

static void le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}

static void check_both(const char *want_safe, const char *want_unsafe,
                       const char *name)
{
    CHECK_STR(detect(img, SIZE, name, 0), want_safe);
    CHECK_STR(detect(img, SIZE, name, INS_F_UNSAFE_QUIRKS), want_unsafe);
}

int main(void)
{
    static const char text[] = "just some text, not a disk\n";

    /* Magic numbers per qemu's probes. */
    reset(); memcpy(img, "QFI\xfb", 4); be32(img + 4, 3);
    check_both("qcow2", "qcow2", "a");
    reset(); memcpy(img, "QFI\xfb", 4); be32(img + 4, 2);
    check_both("qcow2", "qcow2", "a");
    reset(); memcpy(img, "QFI\xfb", 4); be32(img + 4, 1);
    check_both("qcow", "qcow", "a");
    reset(); memcpy(img, "QED\0", 4);
    check_both("qed", "qed", "a");
    reset(); memcpy(img, "KDMV", 4); le32(img + 4, 1);
    check_both("vmdk", "vmdk", "a");
    reset(); memcpy(img, "COWD", 4);
    check_both("vmdk", "vmdk", "a");
    reset(); memcpy(img, "conectix", 8);
    check_both("vpc", "vpc", "a");
    reset(); memcpy(img, "vhdxfile", 8);
    check_both("vhdx", "vhdx", "a");
    reset(); le32(img + 0x40, 0xbeda107f);
    check_both("vdi", "vdi", "a");
    reset(); memcpy(img, "LUKS\xba\xbe\x00\x01", 8);
    check_both("luks", "luks", "a");
    reset(); memcpy(img, "WithoutFreeSpace", 16); le32(img + 16, 2);
    check_both("parallels", "parallels", "a");
    reset(); memcpy(img, "Bochs Virtual HD Image", 23);
    memcpy(img + 32, "Redolog", 8); memcpy(img + 48, "Growing", 8);
    le32(img + 64, 0x00020000);
    check_both("bochs", "bochs", "a");
    reset();
    {
        static const char cloop[] = "#!/bin/sh\n#V2.0 Format\nmodprobe cloop "
                                    "file=$0 && mount -r -t iso9660 /dev/cloop $1\n";
        memcpy(img, cloop, sizeof(cloop) - 1);
    }
    check_both("cloop", "cloop", "a");
    /* dmg: qemu probes by name only. */
    reset();
    check_both("none", "raw", "a.img");
    CHECK_STR(detect(img, SIZE, "disk.dmg", 0), "dmg");

    /* ISO: instar says iso; qemu-img (unsafe) says raw. */
    reset(); memcpy(img + 32769, "CD001", 5);
    check_both("iso", "raw", "a");
    /* An ISO that is also a qcow2 (polyglot): the real format wins. */
    memcpy(img, "QFI\xfb", 4); be32(img + 4, 3);
    check_both("qcow2", "qcow2", "a");

    /* Raw needs an MBR or GPT unless unsafe. */
    reset(); memcpy(img, text, sizeof(text));
    check_both("none", "raw", "t.txt");
    reset(); img[446 + 4] = 0x83; le32(img + 446 + 8, 1); le32(img + 446 + 12, 100);
    img[510] = 0x55; img[511] = 0xaa;
    check_both("raw", "raw", "mbr");
    img[446] = 0x42;                /* invalid boot flag: not an MBR */
    check_both("none", "raw", "mbr");
    reset(); img[446 + 4] = 0xee; le32(img + 446 + 8, 1); le32(img + 446 + 12, 100);
    img[510] = 0x55; img[511] = 0xaa;
    memcpy(img + 512, "EFI PART", 8); le32(img + 512 + 12, 92);
    check_both("raw", "raw", "gpt");
    memcpy(img + 512, "EFI FAKE", 8);   /* protective MBR without GPT header */
    check_both("none", "raw", "gpt");

    /* Empty and one-byte files. */
    CHECK_STR(detect(img, 0, "e", 0), "none");
    CHECK_STR(detect(img, 0, "e", INS_F_UNSAFE_QUIRKS), "raw");
    reset(); img[0] = 'Q';
    CHECK_STR(detect(img, 1, "q", 0), "none");
    CHECK_STR(detect(img, 1, "q", INS_F_UNSAFE_QUIRKS), "raw");
    /* A truncated qcow2 magic is not qcow2. */
    reset(); memcpy(img, "QFI", 3);
    CHECK_STR(detect(img, 3, "q", 0), "none");
    return check_report("test_detect");
}

/*
 * fmt_check.c - helpers shared by the vdi/vpc/vhdx/vmdk checks.
 */
#include "fmt_check.h"

#include <string.h>

/* Swaps two elements of `size` bytes. */
static void swap_elems(unsigned char *a, unsigned char *b, size_t size)
{
    unsigned char t;

    while (size--) {
        t = *a;
        *a++ = *b;
        *b++ = t;
    }
}

static void sift_down(unsigned char *base, size_t root, size_t n, size_t size,
                      int (*cmp)(const void *, const void *))
{
    for (;;) {
        size_t child = 2 * root + 1;

        if (child >= n)
            return;
        if (child + 1 < n &&
            cmp(base + child * size, base + (child + 1) * size) < 0)
            child++;
        if (cmp(base + root * size, base + child * size) >= 0)
            return;
        swap_elems(base + root * size, base + child * size, size);
        root = child;
    }
}

/*
 * Heap sort.  glibc's qsort may ask the kernel how much memory there is
 * (sysinfo), which the worker's seccomp filter forbids; this needs no
 * memory and no system calls, and is O(n log n) on any input.
 */
void ins_check_sort(void *base, size_t n, size_t size,
                    int (*cmp)(const void *, const void *))
{
    unsigned char *b = base;
    size_t i;

    if (n < 2)
        return;
    for (i = n / 2; i-- > 0;)
        sift_down(b, i, n, size, cmp);
    for (i = n - 1; i > 0; i--) {
        swap_elems(b, b + i * size, size);
        sift_down(b, 0, i, size, cmp);
    }
}

void *ins_check_grow(struct ins_ctx *ctx, void *arr, size_t *cap, size_t n,
                     size_t elem, size_t max)
{
    size_t want;
    void *grown;

    if (n < *cap)
        return arr;
    want = *cap ? *cap * 2 : 1024;
    if (want > max)
        want = max;
    if (n >= want)
        return NULL;
    grown = ins_realloc(ctx, arr, want * elem);
    if (grown)
        *cap = want;
    return grown;
}

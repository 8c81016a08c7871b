/*
 * cmd_convert.c - `convert` (being written).
 */
#include "jobs.h"

int cmd_convert(struct options *o, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    die_msg(o, "convert: not implemented yet");
    return 1;
}

/*
 * cmd_inspect.c - `inspect` (being written).
 */
#include "jobs.h"

int cmd_inspect(struct options *o, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    die_msg(o, "inspect: not implemented yet");
    return 1;
}

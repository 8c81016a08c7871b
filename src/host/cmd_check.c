/*
 * cmd_check.c - `check` (being written).
 */
#include "jobs.h"

int cmd_check(struct options *o, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    die_msg(o, "check: not implemented yet");
    return 1;
}

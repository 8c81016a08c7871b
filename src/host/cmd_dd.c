/*
 * cmd_dd.c - `dd` (being written).
 */
#include "jobs.h"

int cmd_dd(struct options *o, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    die_msg(o, "dd: not implemented yet");
    return 1;
}

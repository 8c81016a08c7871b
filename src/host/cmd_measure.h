/*
 * cmd_measure.h - `measure`: the size a new image would need.
 */
#ifndef INSTAR_CMD_MEASURE_H
#define INSTAR_CMD_MEASURE_H

#include "options.h"

int cmd_measure(struct options *o, int argc, char **argv);

#endif

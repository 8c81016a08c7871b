/*
 * main.c - the instar command line: qemu-img's syntax and commands.
 *
 * Invoked through a link named qemu-img, instar presents itself as
 * qemu-img (message prefix and --version text), so it can stand in for it
 * on PATH.
 */
#include <stdio.h>
#include <string.h>

#include "cmd_measure.h"
#include "jobs.h"

static void print_version(const struct options *o)
{
    if (o->as_qemu_img)
        printf("qemu-img version %d.%d.0 (instar %s)\n"
               "Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n",
               o->prof.major, o->prof.minor, INSTAR_VERSION);
    else
        printf("instar version %s (qemu-img %d.%d compatible)\n",
               INSTAR_VERSION, o->prof.major, o->prof.minor);
}

static void print_help(const struct options *o)
{
    printf("%s: a safe, fast stand-in for qemu-img\n"
           "usage: %s [--version] [--help] COMMAND [command options]\n"
           "\n"
           "Commands:\n"
           "  info [-f FMT] [--output=human|json] [--backing-chain] [-U] FILE\n"
           "  map [-f FMT] [--output=human|json] [--start-offset=N] [--max-length=N] FILE\n"
           "  compare [-f FMT] [-F FMT] [-s] [-q] FILE1 FILE2\n"
           "  check [-f FMT] [--output=human|json] [-r leaks|all] [-q] FILE\n"
           "  measure [--output=human|json] [-O FMT] [-o OPTIONS] [--size N | [-f FMT] FILE]\n"
           "  convert [-f FMT] [-O FMT] [-o OPTIONS] [-c] [-p] [-n] [-B BACKING -F FMT] IN... OUT\n"
           "  inspect [--expected-format FMT] [--output=human|json] FILE|-\n"
           "  dd [-f FMT] [-O FMT] [bs=N] [count=N] [skip=N] if=INPUT of=OUTPUT\n"
           "\n"
           "'%s COMMAND --help' describes a command and instar's own options\n"
           "(--qemu-version, --allow-path, --unsafe-quirks, --no-sandbox, ...).\n",
           o->progname, o->progname, o->progname);
}

static int run_command(struct options *o, int argc, char **argv);

static const struct {
    const char *name;
    int (*run)(struct options *o, int argc, char **argv);
} commands[] = {
    { "info", cmd_info },
    { "map", cmd_map },
    { "compare", cmd_compare },
    { "measure", cmd_measure },
    { "check", cmd_check },
    { "inspect", cmd_inspect },
    { "convert", cmd_convert },
    { "dd", cmd_dd },
};

int main(int argc, char **argv)
{
    struct options o;
    int status;

    argc = options_parse(&o, argc, argv);
    if (argc < 0) {
        options_free(&o);
        return 1;
    }
    status = run_command(&o, argc, argv);
    options_free(&o);
    return status;
}

static int run_command(struct options *o, int argc, char **argv)
{
    const char *cmd;

    if (argc < 2) {
        die_msg(o, "Not enough arguments");
        usage_hint(o, NULL);
        return 1;
    }
    cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
        print_help(o);
        return 0;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
        print_version(o);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return commands[i].run(o, argc - 1, argv + 1);
    die_msg(o, "Command not found: %s", cmd);
    usage_hint(o, NULL);
    return 1;
}

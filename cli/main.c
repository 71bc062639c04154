/*
 * cli/main.c — `fedseg <command> [options]`: dispatches to the subcommands in
 * cli/cmd_*.c. `fedseg --help` lists them; `fedseg <command> --help` explains one.
 */
#include <stdio.h>
#include <string.h>
#include "cli/commands.h"
#include "kernels/backend.h"

typedef struct {
    const char *name;
    int (*run)(int, char **);
    const char *summary;
} command;

static const command commands[] = {
    {"synth", fs_cmd_synth, "generate a synthetic multi-site federation (BraTS layout)"},
    {"train", fs_cmd_train, "train a U-Net locally on one or more site folders"},
    {"eval", fs_cmd_eval, "Dice (WT/TC/ET) of a checkpoint on a site folder"},
    {"predict", fs_cmd_predict, "segment one case, write a NIfTI label map and a picture"},
    {"info", fs_cmd_info, "layers and parameter count of a model preset"},
    {"provision", fs_cmd_provision, "make consortium certificates and startup kits, or add a site"},
    {"aggregator", fs_cmd_aggregator, "run a federation's aggregator: FedAvg rounds over mutual TLS, crash-safe"},
    {"node", fs_cmd_node, "run a site of a federation: train rounds for the aggregator (mutual TLS)"},
    {"sim", fs_cmd_sim, "a whole federation on this machine: data, certificates, aggregator, N nodes, plot"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: fedseg <command> [options]   (fedseg <command> --help for details)\n\n"
               "Federated training of brain-tumour segmentation models.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nbackends built: cpu%s\n", fs_backend_cuda() ? ", cuda" : "");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("fedseg 0.1.0\n");
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "fedseg: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}

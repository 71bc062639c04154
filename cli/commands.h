/*
 * cli/commands.h — the `fedseg` subcommands. Each takes the arguments after its
 * name (argv[0] is the subcommand name) and returns the process exit code:
 * 0 success, 1 failure (the reason already printed), 2 bad usage.
 */
#ifndef FS_COMMANDS_H
#define FS_COMMANDS_H

int fs_cmd_synth(int argc, char **argv);
int fs_cmd_train(int argc, char **argv);
int fs_cmd_eval(int argc, char **argv);
int fs_cmd_predict(int argc, char **argv);
int fs_cmd_info(int argc, char **argv);
int fs_cmd_provision(int argc, char **argv);
int fs_cmd_node(int argc, char **argv);
int fs_cmd_aggregator(int argc, char **argv);
int fs_cmd_sim(int argc, char **argv);

#endif

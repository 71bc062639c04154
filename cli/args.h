/*
 * cli/args.h — strict number parsing for command-line options: the whole
 * string must be a number inside [lo, hi] (no trailing characters, no
 * overflow). They print nothing; each command words its own message.
 */
#ifndef FS_CLI_ARGS_H
#define FS_CLI_ARGS_H

int fs_arg_ll(const char *s, long long lo, long long hi, long long *out);
int fs_arg_double(const char *s, double lo, double hi, double *out);

#endif

/*
 * aggregator/robust.h — robust aggregation for plain (unmasked) federations:
 * the coordinate-wise median and the coordinate-wise trimmed mean of the
 * sites' updates (Yin et al., "Byzantine-Robust Distributed Learning",
 * ICML 2018), computed chunk by chunk from the per-site spool files so that
 * memory stays at (number of sites) × (one chunk), whatever the model size.
 *
 * For each coordinate i, over the n updates u_1[i] .. u_n[i] (unweighted:
 * a site's sample count must not buy it extra influence over a robust
 * statistic):
 *   median        the middle value (n odd) or the mean of the two middle
 *                 values (n even);
 *   trimmed_mean  drop the k = floor(trim·n) smallest and k largest values,
 *                 average the rest (needs n − 2k ≥ 1; 0 ≤ trim < 0.5).
 * Values are sorted per coordinate (insertion sort: n is the number of
 * sites) and summed in double, so the result is independent of the order of
 * the updates and of the chunk size.
 *
 * WARNING: robust statistics need every site's update in the clear. With
 * secure aggregation the aggregator learns only the masked sum Σ_s u_s, and
 * with encrypted aggregation only ciphertexts of it: a median or a trimmed
 * mean of values it never sees cannot be computed, so the aggregator refuses
 * those combinations (cli/cmd_aggregator.c, docs/protocol.md).
 *
 * Tested by tests/test_robust.c (hand-computed statistics, an outlier site
 * that moves the mean but not the median or the trimmed mean, chunk and
 * order invariance, spool files of a length no chunk divides).
 */
#ifndef FS_ROBUST_H
#define FS_ROBUST_H

#include <stddef.h>
#include "kernels/status.h"

typedef enum { FS_AGG_MEAN = 0, FS_AGG_MEDIAN, FS_AGG_TRIMMED_MEAN, FS_AGG_COUNT } fs_agg_rule;

/* "mean" | "median" | "trimmed_mean". FS_ERR_ARG for any other name. */
fs_status fs_agg_rule_parse(const char *name, fs_agg_rule *out);
const char *fs_agg_rule_name(fs_agg_rule r);

/* out[i] = rule over rows[0..n_rows)[i] for i < len. scratch holds n_rows
 * floats. FS_ERR_ARG for mean (that is the weighted fold's job), no rows,
 * or a trim that leaves no value. out may alias none of the rows. */
fs_status fs_robust_coord(fs_agg_rule rule, double trim, const float *const *rows, size_t n_rows,
                          size_t len, float *out, float *scratch);

/* The same over n_files spool files of n little-endian fp32 each, read
 * chunk_params values at a time from every file; out receives n floats.
 * Errors (a file missing, short or unreadable) are logged naming the file:
 * FS_ERR_IO / FS_ERR_FORMAT; FS_ERR_NOMEM. */
fs_status fs_robust_spools(fs_agg_rule rule, double trim, const char *const *paths, size_t n_files,
                           size_t n, size_t chunk_params, float *out);

#endif

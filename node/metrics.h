/*
 * node/metrics.h — BraTS Dice scores from class maps (classes 0..3: background,
 * necrotic core, edema, enhancing):
 *   WT whole tumour = {1,2,3}, TC tumour core = {1,3}, ET enhancing = {3}.
 * A region absent from both prediction and ground truth scores 1 (the BraTS
 * convention); absent from one only, 0.
 */
#ifndef FS_METRICS_H
#define FS_METRICS_H

#include <stddef.h>
#include <stdint.h>

enum { FS_WT = 0, FS_TC = 1, FS_ET = 2 };
extern const char *const fs_region_names[3]; /* "WT", "TC", "ET" */

void fs_dice_brats(const uint8_t *pred, const uint8_t *truth, size_t n, double dice[3]);

#endif

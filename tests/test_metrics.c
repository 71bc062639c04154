/*
 * tests/test_metrics.c — BraTS Dice: regions WT {1,2,3}, TC {1,3}, ET {3};
 * hand-computed cases, the empty-region convention, symmetry.
 */
#include "check.h"
#include "node/metrics.h"

int main(void)
{
    double d[3];
    /* truth: 1 1 2 2 3 0 0 0 ; pred: 1 2 2 0 3 3 0 0 */
    const uint8_t truth[8] = {1, 1, 2, 2, 3, 0, 0, 0}, pred[8] = {1, 2, 2, 0, 3, 3, 0, 0};
    fs_dice_brats(pred, truth, 8, d);
    /* WT: truth {0..4} (5), pred {0,1,2,4,5} (5), inter {0,1,2,4} 4 -> 8/10 */
    CHECK(fabs(d[FS_WT] - 0.8) < 1e-12, "WT %.6f", d[FS_WT]);
    /* TC: truth {0,1,4} (3), pred {0,4,5} (3), inter {0,4} 2 -> 4/6 */
    CHECK(fabs(d[FS_TC] - 4.0 / 6) < 1e-12, "TC %.6f", d[FS_TC]);
    /* ET: truth {4}, pred {4,5} -> 2/3 */
    CHECK(fabs(d[FS_ET] - 2.0 / 3) < 1e-12, "ET %.6f", d[FS_ET]);
    double e[3];
    fs_dice_brats(truth, pred, 8, e);
    CHECK(e[0] == d[0] && e[1] == d[1] && e[2] == d[2], "Dice not symmetric");
    const uint8_t zero[4] = {0}, two[4] = {2, 0, 0, 0};
    fs_dice_brats(zero, zero, 4, d);
    CHECK(d[0] == 1 && d[1] == 1 && d[2] == 1, "empty/empty should score 1");
    fs_dice_brats(two, zero, 4, d);
    CHECK(d[0] == 0 && d[1] == 1 && d[2] == 1, "false positive edema: WT 0, TC/ET 1 (got %.2f %.2f %.2f)", d[0], d[1], d[2]);
    fs_dice_brats(truth, truth, 8, d);
    CHECK(d[0] == 1 && d[1] == 1 && d[2] == 1, "perfect prediction");
    return check_result();
}

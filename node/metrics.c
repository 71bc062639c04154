/* node/metrics.c — see metrics.h; tested by tests/test_metrics.c. */
#include "node/metrics.h"

const char *const fs_region_names[3] = {"WT", "TC", "ET"};

void fs_dice_brats(const uint8_t *pred, const uint8_t *truth, size_t n, double dice[3])
{
    /* region membership masks per class 0..3, bit r set when class is in region r */
    static const uint8_t in_region[4] = {0, 1 | 2, 1, 1 | 2 | 4};
    size_t inter[3] = {0}, sp[3] = {0}, st[3] = {0};
    for (size_t i = 0; i < n; i++) {
        uint8_t a = pred[i] < 4 ? in_region[pred[i]] : 0, b = truth[i] < 4 ? in_region[truth[i]] : 0;
        for (int r = 0; r < 3; r++) {
            int pa = (a >> r) & 1, pb = (b >> r) & 1;
            sp[r] += pa;
            st[r] += pb;
            inter[r] += pa & pb;
        }
    }
    for (int r = 0; r < 3; r++)
        dice[r] = sp[r] + st[r] == 0 ? 1.0 : 2.0 * (double)inter[r] / (double)(sp[r] + st[r]);
}

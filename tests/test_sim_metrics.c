/*
 * tests/test_sim_metrics.c — the readers of `fedseg sim` (cli/sim_metrics.c):
 * a metrics line as aggregator/round.c writes it (two sites reported, one
 * missing, a null Dice), keys in another order, unknown keys and nested
 * values skipped, and malformed lines refused (truncated, no round, round 0,
 * trailing bytes, too many sites, bad nesting); the node's final line.
 */
#include "check.h"
#include "cli/sim.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const LINE =
    "{\"round\":3,\"wall_seconds\":15.0417331,\"closed_by\":\"deadline\",\"sites_selected\":3,"
    "\"sites_reported\":2,\"num_samples\":77,\"sites\":[{\"site\":\"site_1\",\"num_samples\":50,"
    "\"train_loss\":2.53,\"global_dice_wt\":0.0448,\"global_dice_tc\":0.01,\"global_dice_et\":null,"
    "\"bytes_received\":1949552,\"bytes_sent\":1949708,\"train_seconds\":0.68,\"upload_seconds\":0.02},"
    "{\"site\":\"site_2\",\"num_samples\":27,\"train_loss\":2.5,\"global_dice_wt\":null,"
    "\"bytes_received\":1000,\"bytes_sent\":2000}],\"missing\":[{\"site\":\"site_3\",\"bytes_sent\":500}]}\n";

int main(void)
{
    fs_sim_round r;
    CHECK(fs_sim_parse_metrics(LINE, &r) == FS_OK, "the aggregator's line parses");
    CHECK(r.round == 3 && fabs(r.wall_seconds - 15.0417331) < 1e-9, "round %u, %g s", r.round, r.wall_seconds);
    CHECK(!strcmp(r.closed_by, "deadline"), "closed_by '%s'", r.closed_by);
    CHECK(r.sites_selected == 3 && r.sites_reported == 2 && r.nsites == 3, "selected %d reported %d entries %d",
          r.sites_selected, r.sites_reported, r.nsites);
    int a = fs_sim_round_find(&r, "site_1"), b = fs_sim_round_find(&r, "site_2"), c = fs_sim_round_find(&r, "site_3");
    CHECK(a == 0 && b == 1 && c == 2 && fs_sim_round_find(&r, "site_4") == -1, "positions %d %d %d", a, b, c);
    if (a == 0 && b == 1 && c == 2) {
        CHECK(r.site[0].reported && r.site[1].reported && !r.site[2].reported, "reported flags");
        CHECK(fabs(r.site[0].dice_wt - 0.0448) < 1e-12 && isnan(r.site[1].dice_wt) && isnan(r.site[2].dice_wt),
              "Dice %g %g %g", r.site[0].dice_wt, r.site[1].dice_wt, r.site[2].dice_wt);
        CHECK(fabs(r.site[0].train_loss - 2.53) < 1e-12, "loss %g", r.site[0].train_loss);
        CHECK(r.site[0].bytes == 1949552.0 + 1949708.0 && r.site[1].bytes == 3000 && r.site[2].bytes == 500,
              "bytes %g %g %g", r.site[0].bytes, r.site[1].bytes, r.site[2].bytes);
    }
    CHECK(r.bytes == 1949552.0 + 1949708.0 + 3000 + 500, "total bytes %g", r.bytes);

    /* "missing" first, unknown keys with nested values, spaces: reported
     * entries still come first */
    const char *other = " { \"missing\" : [ {\"site\":\"b\"} ] , \"extra\" : {\"x\":[1,{\"y\":\"}\"}],\"t\":true},"
                        " \"sites\":[{\"site\":\"a\",\"global_dice_wt\":0.5,\"note\":\"q\\\"uote\"}], \"round\" : 7 } ";
    CHECK(fs_sim_parse_metrics(other, &r) == FS_OK, "another key order parses");
    CHECK(r.round == 7 && r.nsites == 2 && !strcmp(r.site[0].name, "a") && r.site[0].reported &&
          !strcmp(r.site[1].name, "b") && !r.site[1].reported && r.site[0].dice_wt == 0.5,
          "round %u, %d entries, first '%s'", r.round, r.nsites, r.site[0].name);
    CHECK(isnan(r.wall_seconds), "absent wall_seconds is NaN");

    static const char *const bad[] = {
        "",
        "{}",
        "{\"round\":0}",
        "{\"round\":1.5}",
        "{\"round\":-1}",
        "{\"round\":1",
        "{\"round\":1} x",
        "{\"round\":1,\"sites\":[{\"site\":\"a\"}",
        "{\"round\":1,\"sites\":[{}]}",
        "{\"round\":1,\"sites\":{}}",
        "{\"round\":1,\"closed_by\":\"unterminated}",
        "{\"round\":1,\"x\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}",
        "[1,2]",
        "{\"round\":\"1\"}",
        "{\"round\":1,\"x\":tru}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(fs_sim_parse_metrics(bad[i], &r) == FS_ERR_FORMAT, "malformed line %zu accepted: %s", i, bad[i]);

    /* more sites than FS_SIM_MAX_SITES */
    char big[8192] = "{\"round\":1,\"sites\":[";
    for (int i = 0; i <= FS_SIM_MAX_SITES; i++) {
        char e[64];
        snprintf(e, sizeof e, "%s{\"site\":\"s%d\"}", i ? "," : "", i);
        strcat(big, e);
    }
    strcat(big, "]}");
    CHECK(fs_sim_parse_metrics(big, &r) == FS_ERR_FORMAT, "%d sites accepted", FS_SIM_MAX_SITES + 1);

    unsigned fr = 0;
    double d[3] = {0, 0, 0};
    CHECK(fs_sim_parse_final("federation finished after round 15: final global model, held-out Dice WT 0.812 TC "
                             "0.700 ET 0.650 (received 1.95 MB)\n", &fr, d) == FS_OK &&
          fr == 15 && d[0] == 0.812 && d[1] == 0.7 && d[2] == 0.65, "final line: round %u WT %g", fr, d[0]);
    CHECK(fs_sim_parse_final("round 15  global Dice WT 0.812 TC 0.700 ET 0.650", &fr, d) == FS_ERR_FORMAT,
          "a round line is not the final line");
    CHECK(fs_sim_parse_final("federation finished after round 15: final global model, held-out Dice WT x", &fr, d) ==
          FS_ERR_FORMAT, "a truncated final line");

    FILE *f = fopen("sim_metrics_node.log", "w");
    if (f) {
        fprintf(f, "fedseg: joined\nround 1  global Dice WT 0.1\n"
                   "federation finished after round 2: final global model, held-out Dice WT 0.5 TC 0.4 ET 0.3 (x)\n");
        fclose(f);
        CHECK(fs_sim_read_final("sim_metrics_node.log", &fr, d) == FS_OK && fr == 2 && d[0] == 0.5, "log scan");
        remove("sim_metrics_node.log");
    }
    CHECK(fs_sim_read_final("sim_metrics_no_such.log", &fr, d) == FS_ERR_IO, "a missing log");
    return check_result();
}

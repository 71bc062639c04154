/*
 * tests/round_fixture.h — the round configuration the aggregator tests share
 * (aggregator/round.h): `tiny` model metadata, fraction 1, a 100 s deadline,
 * a 5 s join wait (sites joining together all get into round 1), one local
 * epoch at lr 0.001. Each test then sets what it is about.
 */
#ifndef FS_TEST_ROUND_FIXTURE_H
#define FS_TEST_ROUND_FIXTURE_H

#include <string.h>
#include "aggregator/round.h"

static inline fs_round_config fs_test_round_config(const char *dir, const char *const *sites, size_t n,
                                                   uint32_t rounds, uint32_t min_sites)
{
    fs_round_config c;
    memset(&c, 0, sizeof c);
    c.sites = sites;
    c.n_sites = n;
    c.rounds = rounds;
    c.min_sites = min_sites;
    c.fraction = 1.0;
    c.deadline_s = 100;
    c.join_wait_s = 5;
    c.local_epochs = 1;
    c.lr = 1e-3f;
    c.state_dir = dir;
    strcpy(c.model.preset, "tiny");
    c.model.base = 8;
    c.model.depth = 4;
    c.model.size = 64;
    return c;
}

#endif

#!/usr/bin/env python3
"""The mini-batch order auto-round 0.16.1 draws (its own IndexSampler after random.seed(seed)),
for tests/test_cutune.c's check of fb_autoround_sample_order. Run in a venv with auto-round 0.16.1
(e.g. /work/venvs/a16/bin/python scripts/gen-sample-order-golden.py); paste the output into the
test's ORDER_* tables."""
import random

import auto_round
from auto_round.compressors.utils import IndexSampler

assert auto_round.__version__ == "0.16.1", auto_round.__version__
for name, nsamples, bs, iters, seed in (("A", 10, 4, 7, 42), ("B", 9, 3, 8, 2**33 + 5), ("C", 5, 8, 3, 7)):
    random.seed(seed)
    s = IndexSampler(nsamples, min(bs, nsamples))
    order = [i for _ in range(iters) for i in s.next_batch()]
    print(f"// {name}: nsamples {nsamples}, batch {bs}, iters {iters}, seed {seed}")
    print(f"static const size_t ORDER_{name}[] = {{{', '.join(map(str, order))}}};")

import os
import time

from bench.procstat import (
    Mem,
    cpu_seconds,
    descendants,
    memory,
    parse_schedstat,
    parse_smaps_rollup,
    parse_stat,
)

ROLLUP = """55d0c0a00000-7ffd5e1f5000 ---p 00000000 00:00 0                          [rollup]
Rss:               20616 kB
Pss:               14585 kB
Pss_Dirty:          9000 kB
Shared_Clean:       6000 kB
Swap:                  0 kB
"""


def test_parse_smaps_rollup_reads_rss_and_pss():
    assert parse_smaps_rollup(ROLLUP) == Mem(20616, 14585)


def test_parse_stat_survives_parentheses_and_spaces_in_the_name():
    # a process title can contain ") (" and spaces; fields are counted after the last ")"
    text = "4242 (evil) (name x) S 17 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 1 0 5 0 0"
    pid, ppid, cpu = parse_stat(text)
    assert (pid, ppid) == (4242, 17)
    assert cpu == (250 + 50) / os.sysconf("SC_CLK_TCK")


def test_parse_schedstat_is_nanoseconds():
    assert parse_schedstat("1500000000 20 3\n") == 1.5


def test_descendants_walks_the_whole_tree():
    parent_of = {1: 0, 10: 1, 11: 10, 12: 10, 13: 11, 20: 1}
    assert descendants(10, parent_of) == [10, 11, 12, 13]
    assert descendants(13, parent_of) == [13]


def test_memory_and_cpu_of_a_real_process():
    me = os.getpid()
    mem = memory([me])
    assert mem.pss_kib > 1000 and mem.rss_kib >= mem.pss_kib // 2
    before = cpu_seconds([me])
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert cpu_seconds([me]) - before >= 0.04
    assert memory([2**22 + 12345]) == Mem(0, 0)  # a pid that does not exist counts nothing
